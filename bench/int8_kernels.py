"""Which int8 matmul is fastest on this CPU? The candidates for `generate.quantize=int8`.

Every linear layer of a GPT-2 124M shape (12 x qkv, proj, fc, proj, and the 50,257-row LM
head) as weight-only int8 with one scale per output row, multiplied in turn by activations of
M rows (M=1: decoding one token; larger M: reading a prompt, evaluating). The whole set is
~124 MB of int8 (~500 MB as float32), far more than the caches, so each pass reads its weights
from memory as decoding does. Candidates, alternating, each the median of its rounds:

    float32         x @ W^T, W^T stored contiguous (infer/layout.py's TransposedLinear)
    int8pack_bf16   torch._weight_int8pack_mm: int8 weights, bf16 activations and scales
    ao_dynamic      torch.ao dynamic quantization (fbgemm): int8 per-channel weights,
                    activations quantized to uint8 per tensor at run time
    compiled        torch.compile of (x * W_int8).sum(-1) * scale: Inductor's fused loop
                    (model/quantize.py's kernel for one row)
    dequant         (x @ W_int8^T.float()) * scale, no compiler

Accuracy: the largest error of each candidate's output relative to float32's output on the
same int8 weights' dequantized values (i.e. the kernel's own error, not the rounding to int8).

    python bench/int8_kernels.py [--m 1,8,256] [--rounds 7] [--skip compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")  # torch.ao's deprecation notices

D, LAYERS, VOCAB = 768, 12, 50257


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def candidates(mats: list[torch.Tensor], skip: set[str]):
    qs = [quantize(w) for w in mats]
    deq = [q.float() * s[:, None] for q, s in qs]  # what every int8 kernel should compute
    f32 = [w.t().contiguous() for w in deq]
    bf = [(q, s.bfloat16()) for q, s in qs]
    out = {
        "float32": lambda xs: [xs[w.size(0)] @ w for w in f32],
        "int8pack_bf16": lambda xs: [
            torch._weight_int8pack_mm(xs[q.size(1)].bfloat16(), q, s).float() for q, s in bf
        ],
        "dequant": lambda xs: [(xs[q.size(1)] @ q.t().float()) * s for q, s in qs],
    }
    if "ao_dynamic" not in skip:
        config = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        ao = []
        for w in deq:
            lin = torch.nn.Linear(w.size(1), w.size(0), bias=False)
            lin.weight.data = w
            seq = torch.nn.Sequential(lin)
            ao.append(torch.ao.quantization.quantize_dynamic(seq, config, dtype=torch.qint8)[0])
        out["ao_dynamic"] = lambda xs: [m(xs[m.in_features]) for m in ao]
    if "compiled" not in skip:

        @torch.compile(dynamic=True)  # as model/quantize.py: one kernel for every shape
        def mulsum(x, q, s):
            return (x[:, None, :] * q.to(x.dtype)).sum(-1) * s

        out["compiled"] = lambda xs: [mulsum(xs[q.size(1)], q, s) for q, s in qs]
    return out, f32


def bench_m(m: int, mats: list[torch.Tensor], rounds: int, skip: set[str]) -> dict:
    sides, f32 = candidates(mats, skip)
    xs = {k: torch.randn(m, k) for k in (D, 4 * D)}
    ref = [xs[w.size(0)] @ w for w in f32]
    result: dict = {"rows": m, "ms_per_pass": {}, "max_rel_error": {}, "first_call_s": {}}
    for name, run in sides.items():
        start = time.perf_counter()
        outs = run(xs)  # warm-up; compiles
        result["first_call_s"][name] = round(time.perf_counter() - start, 2)
        err = max(
            float((o - r).abs().max() / r.abs().max()) for o, r in zip(outs, ref, strict=True)
        )
        result["max_rel_error"][name] = float(f"{err:.2e}")
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(rounds):
        for name, run in sides.items():  # alternate: each sees the same machine load
            start = time.perf_counter()
            run(xs)
            times[name].append(time.perf_counter() - start)
    result["ms_per_pass"] = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    base = result["ms_per_pass"]["float32"]
    result["speedup_vs_float32"] = {k: round(base / v, 2) for k, v in result["ms_per_pass"].items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,8,256", help="activation rows to test")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="candidates to leave out, e.g. compiled")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)] * LAYERS + [(VOCAB, D)]
    mats = [torch.randn(n, k) * 0.02 for n, k in shapes]
    skip = set(filter(None, args.skip.split(",")))
    result = {
        "bench": "int8_matmul_kernels",
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "by_rows": [bench_m(int(m), mats, args.rounds, skip) for m in args.m.split(",")],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
