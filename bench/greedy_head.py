"""Greedy rows' LM head: the float32 head + argmax against the bf16 screen (infer/greedy.py).

At GPT-2 124M's shape (random weights, built from the preset as bench/decode_layout.py does)
the head is 50257 x 768 float32, 154 MB: ~30% of what a decode step reads. The screen reads a
bf16 copy (half the bytes) and rescores its few candidates in float32. Timed, alternating A
and B in each round, medians reported:

- `head`: the head alone for 1, 8 and 32 hidden states (the model's own, from token
  sequences), float32 packed head + argmax against the screened argmax; and how many
  candidates 256 such rows kept (rescored in float32), and how many took the full head;
- `engine`: the serving engine's decode step (ms per step; tokens/s over all rows) with
  `screen_greedy` on and off, greedy rows, and whether both chose the same tokens;
- `sizes` (--sizes): the head alone at one row for several shapes, the cache flushed between
  calls as the rest of a model's weights would: where `SCREEN_FROM` comes from.

    python bench/greedy_head.py [--rounds 7] [--rows 1,8,32] [--tokens 24] [--threads 1] [--sizes]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from baselines import GPT2_124M, decode_step_ms, report

from scratchlm.infer import greedy
from scratchlm.infer.engine import Engine
from scratchlm.infer.layout import TransposedLinear, prepare_for_generation
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT

SIZES = [(192, 2048), (768, 4096), (768, 8192), (768, 16384), (768, 50257)]  # (C, V)


def timed(f, *args) -> float:
    start = time.perf_counter()
    f(*args)
    return (time.perf_counter() - start) * 1000


def full_argmax(head: TransposedLinear, x: torch.Tensor) -> list[int]:
    return head(x).argmax(1).tolist()


def head_times(model: GPT, rows: list[int], rounds: int) -> dict:
    head, V = model.lm_head, model.cfg.vocab_size
    screen = greedy.maybe_screened_head(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the model's own final hidden states, at every position
        h = model.hidden_states(torch.randint(V, (4, 64), generator=g)).reshape(-1, model.cfg.n_embd)  # fmt: skip
    count = torch.bincount(screen.candidates(h, V)[0], minlength=h.size(0)).float()
    out = {"candidates per row": {"mean": round(count.mean().item(), 2), "median": count.median().item(), "max": count.max().item(), "rows": h.size(0)}}  # fmt: skip
    assert screen.argmax(h, V) == full_argmax(head, h)
    for n in rows:
        x = h[torch.randperm(h.size(0), generator=g)[:n]]
        times = {"float32 head + argmax": [], "screened argmax": []}
        for _ in range(rounds):
            times["float32 head + argmax"].append(timed(full_argmax, head, x))
            times["screened argmax"].append(timed(screen.argmax, x, V))
        out[f"{n} rows"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return out | {"rows on the full head": screen.full}


def decode(model: GPT, rows: int, tokens: int, screen: bool) -> tuple[float, list[list[int]]]:
    """Median ms of a decode step of `rows` greedy rows, and their tokens."""
    engine = Engine(model, None, max_batch=rows, screen_greedy=screen)
    batch = [Row([(7 * i + j) % 50257 for j in range(16)], tokens, Sampling(temperature=0)) for i in range(rows)]  # fmt: skip
    return decode_step_ms(engine, batch), [r.tokens for r in batch]


def engine_times(model: GPT, rows: list[int], tokens: int, rounds: int) -> dict:
    out = {}
    for n in rows:
        times: dict[str, list[float]] = {"screen off": [], "screen on": []}
        same = True
        for _ in range(rounds):
            off, a = decode(model, n, tokens, screen=False)
            on, b = decode(model, n, tokens, screen=True)
            times["screen off"].append(off)
            times["screen on"].append(on)
            same = same and a == b
        ms = {k: statistics.median(v) for k, v in times.items()}
        out[f"{n} rows"] = {f"{k} ms/step": round(v, 2) for k, v in ms.items()}
        out[f"{n} rows"] |= {f"{k} tokens/s": round(1000 * n / v, 1) for k, v in ms.items()}
        out[f"{n} rows"]["speedup"] = round(ms["screen off"] / ms["screen on"], 3)
        out[f"{n} rows"]["same tokens"] = same
    return out


def size_times(rounds: int) -> dict:
    flush = torch.zeros(16 << 20)  # 64 MiB: more than this machine's caches
    out = {}
    for C, V in SIZES:
        torch.manual_seed(0)
        head = TransposedLinear(torch.nn.Linear(C, V, bias=False))
        screen = greedy.ScreenedHead(head)
        x = torch.nn.functional.layer_norm(torch.randn(1, C), (C,))
        times: dict[str, list[float]] = {"float32": [], "screened": []}
        for _ in range(rounds * 3):
            flush.add_(1)
            times["float32"].append(timed(full_argmax, head, x))
            flush.add_(1)
            times["screened"].append(timed(screen.argmax, x, V))
        out[f"{C} x {V} ({C * V / 2**20:.1f}M weights)"] = {k: round(statistics.median(v), 3) for k, v in times.items()}  # fmt: skip
    return out | {"SCREEN_FROM": f"{greedy.SCREEN_FROM / 2**20:.1f}M weights"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=24, help="decode steps per engine round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", action="store_true", help="also time the head at other shapes")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"bench": "greedy_head", "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}  # fmt: skip
    if not greedy.bf16_gemm_supported():
        report(result | {"skipped": "no oneDNN bf16 GEMM on this machine (avx512_bf16 / amx)"})
        return
    torch.manual_seed(0)
    model = prepare_for_generation(GPT(ModelConfig(**GPT2_124M)).eval())
    rows = [int(n) for n in args.rows.split(",")]
    result["head"] = head_times(model, rows, args.rounds * 3)
    print("head", result["head"], flush=True)
    result["engine"] = engine_times(model, rows, args.tokens, args.rounds)
    print("engine", result["engine"], flush=True)
    if args.sizes:
        result["sizes"] = size_times(args.rounds)
    result["load_after"] = os.getloadavg()[0]
    report(result, args.out)


if __name__ == "__main__":
    main()
