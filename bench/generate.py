"""Generation benchmark: greedy decode tokens/s and time to first token, batch 1.

scratchlm's generator (infer/generate.py, KV cache) against HF transformers' `generate`
(greedy, use_cache=True) on the same weights: a GPT-2-layout model with random weights is
written by `export_hf` (what `scratchlm export hf` does) and loaded back by
`AutoModelForCausalLM`; both are then moved to --device in --dtype (the weights themselves:
what `scratchlm generate / serve --dtype` do). Shapes: ~10M and GPT-2 124M. Rounds alternate
ours and HF; each side reports its median round. The greedy tokens should be identical
(always in float32; in bf16 two correct implementations may round a near-tie apart).

Decoding one token reads every weight once, so its speed limit is memory bandwidth, not
arithmetic: beside tokens/s, `bandwidth_use` is weight bytes x tokens/s over this device's
measured copy bandwidth (read + write of a large tensor), and `mfu` is 2 x params x tokens/s
over the measured matmul peak in the same dtype. Prints JSON (and writes it to --out).

    python bench/generate.py [--shapes 10m,124m] [--rounds 3] [--new-tokens 128]
    python bench/generate.py --device cuda --dtype bfloat16 --shapes 124m
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from baselines import report

from scratchlm.config import ModelConfig, build
from scratchlm.device import DTYPES, resolve_device
from scratchlm.export.hf import export_hf
from scratchlm.infer.generate import Row, generate_rows
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.sampling import Sampling
from scratchlm.model.gpt import GPT
from scratchlm.train.mfu import measure_matmul_peak

SHAPES = {
    "10m": dict(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384),
    "124m": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def ours(model: GPT, prompt: list[int], n: int) -> tuple[list[int], float, float]:
    """(tokens, seconds to the first token, seconds for the rest)."""
    start = time.perf_counter()
    row = Row(prompt, n, Sampling(temperature=0))
    first = None
    for _ in generate_rows(model, None, [row]):
        first = first or time.perf_counter()
    return row.tokens, first - start, time.perf_counter() - first


class FirstToken:
    """An HF streamer that notes when the first generated token arrives (the first `put` is
    the prompt itself)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, dtype: torch.dtype, gigabytes: float) -> float:
    """Bytes/s of a device-to-device copy of a large tensor, bytes read + bytes written."""
    n = int(gigabytes * 1e9 / 2 / torch.finfo(dtype).bits * 8)
    a = torch.randn(n, device=device).to(dtype)
    b = torch.empty_like(a)
    b.copy_(a)  # warm up
    synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        b.copy_(a)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * a.numel() * a.element_size() / best


def hf(model, prompt: list[int], n: int) -> tuple[list[int], float, float]:
    streamer = FirstToken()
    ids = torch.tensor([prompt], device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            use_cache=True,
            streamer=streamer,
            eos_token_id=None,  # random weights: never stop early, on either side
            pad_token_id=0,
        )
    synchronize(model.device)
    end = time.perf_counter()
    return out[0, len(prompt) :].tolist(), streamer.first - start, end - streamer.first


def bench_shape(key: str, args: argparse.Namespace, device, dtype, peaks: dict) -> dict:
    from transformers import AutoModelForCausalLM

    rounds, n, prompt_len = args.rounds, args.new_tokens, args.prompt_tokens
    torch.manual_seed(0)
    model = GPT(build(ModelConfig, {"preset": "gpt2-124m", **SHAPES[key]})).eval()
    params = model.num_params(non_embedding=False)
    folder = tempfile.mkdtemp()
    export_hf(model, None, folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval().to(device, dtype)
    model.to(device, dtype)
    prepare_for_generation(model)  # what `scratchlm generate / chat / serve` run
    prompt = torch.randint(SHAPES[key]["vocab_size"], (prompt_len,)).tolist()
    sides = {"scratchlm": lambda: ours(model, prompt, n), "hf": lambda: hf(theirs, prompt, n)}
    for run in sides.values():
        run()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    outputs = {}
    for _ in range(rounds):
        for name, run in sides.items():  # alternate A, B: both see the same machine load
            tokens, ttft, rest = run()
            times[name].append((ttft, rest))
            outputs[name] = tokens
    decode = {k: round((n - 1) / statistics.median(r for _, r in v), 1) for k, v in times.items()}
    ttft = {k: round(1000 * statistics.median(t for t, _ in v), 1) for k, v in times.items()}
    weight_bytes = params * torch.finfo(dtype).bits // 8
    return {
        "params": params,
        "prompt_tokens": prompt_len,
        "new_tokens": n,
        "decode_tokens_per_second": decode,
        "time_to_first_token_ms": ttft,
        "decode_ratio_vs_hf": round(decode["scratchlm"] / decode["hf"], 3),
        "bandwidth_use": {k: round(weight_bytes * v / peaks["copy"], 3) for k, v in decode.items()},
        "mfu": {k: round(2 * params * v / peaks["matmul"], 4) for k, v in decode.items()},
        "greedy_identical": outputs["scratchlm"] == outputs["hf"],
        "first_difference": next(
            (
                i
                for i, (a, b) in enumerate(zip(outputs["scratchlm"], outputs["hf"], strict=False))
                if a != b
            ),
            None,
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="10m,124m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if there is one)")
    ap.add_argument("--dtype", default="float32", help="the weights' dtype: float32, bfloat16")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device, "--device"), DTYPES[args.dtype]
    size = 8192 if device.type == "cuda" else 1024
    peaks = {
        "matmul": measure_matmul_peak(device, size, 1.0, dtype),
        "copy": copy_bandwidth(device, dtype, 4.0 if device.type == "cuda" else 0.4),
    }
    result = {
        "bench": "generate_greedy_batch1",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        f"{args.dtype}_matmul_peak_tflops": round(peaks["matmul"] / 1e12, 3),
        "copy_bandwidth_gb_per_s": round(peaks["copy"] / 1e9, 1),
    }
    for key in args.shapes.split(","):
        result[key] = bench_shape(key, args, device, dtype, peaks)
    report(result, args.out)


if __name__ == "__main__":
    main()
