"""Decode attention: the C kernel (infer/native.py) against PyTorch's SDPA, as the engine calls them.

Two measurements, each alternating the kernel and SDPA in one run:

1. attention alone: the slot cache's `attend` for every layer of a GPT-2 124M-shape cache
   (12 layers, 12 heads of 64), one new token for each of 1, 8 or 32 rows whose contexts are
   8 to 176 tokens long (the serving benchmark's prompts of 8-48 tokens plus up to 128
   generated), all layers in turn so that each layer's keys come from memory, as in a step;
2. the engine's decode step at the 124M shape (random weights), 8 and 32 greedy rows,
   the median ms of the `--steps` steps after the prompts and 63 tokens (contexts ~100).

    python bench/decode_attention.py [--rows 1,8,32] [--rounds 5] [--steps 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from baselines import GPT2_124M, decode_step_ms, report

from scratchlm.infer import native
from scratchlm.infer.engine import Engine
from scratchlm.infer.kv import SlotCache
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT

CFG = ModelConfig(**GPT2_124M)


def attention_ms(cache: SlotCache, rows: int, kernel: bool, repeats: int = 5) -> float:
    """ms for one decode step's attention over all layers."""
    cache.kernel = kernel
    h, d = CFG.n_head, CFG.head_dim
    q, k = torch.randn(1, h, rows, d), torch.randn(1, h, rows, d)
    times = []
    for _ in range(repeats):
        cache.plan([(slot, 1) for slot in range(rows)])
        start = time.perf_counter()
        for layer in range(CFG.n_layer):
            cache.attend(layer, q, k, k)
        times.append(time.perf_counter() - start)
        cache.abandon()  # the step is not kept: lengths stay as they were
    return statistics.median(times) * 1000


def engine_ms(model: GPT, prompts: list[list[int]], kernel: bool, steps: int) -> float:
    engine = Engine(model, None, max_batch=len(prompts), token_budget=2048)
    engine.cache.kernel = kernel
    rows = [Row(p, steps + 64, Sampling(temperature=0)) for p in prompts]
    return decode_step_ms(engine, rows, skip=64)  # the prompts and 63 tokens: contexts ~100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not native.available():
        raise SystemExit("the kernel could not be built here (no C compiler?): nothing to compare")
    result: dict = {"bench": "decode_attention", "threads": torch.get_num_threads(),
                    "load": round(os.getloadavg()[0], 2), "attention_ms": {}, "engine_step_ms": {}}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for rows in [int(r) for r in args.rows.split(",")]:
        cache = SlotCache(CFG, rows, capacity=256)
        cache.k.normal_(generator=g)
        cache.v.normal_(generator=g)
        cache.lengths = torch.randint(8, 176, (rows,), generator=g).tolist()
        times: dict[str, list[float]] = {"kernel": [], "sdpa": []}
        for _ in range(args.rounds):
            for name in times:
                times[name].append(attention_ms(cache, rows, name == "kernel"))
        result["attention_ms"][f"rows={rows}"] = _summary(times)
        print(f"attention rows={rows}", result["attention_ms"][f"rows={rows}"], flush=True)
    torch.manual_seed(0)
    model = prepare_for_generation(GPT(CFG).eval())
    for rows in (8, 32):
        prompts = [torch.randint(50257, (8 + (i * 7) % 41,), generator=g).tolist() for i in range(rows)]  # fmt: skip
        times = {"kernel": [], "sdpa": []}
        for _ in range(max(1, args.rounds // 2)):
            for name in times:
                times[name].append(engine_ms(model, prompts, name == "kernel", args.steps))
        result["engine_step_ms"][f"rows={rows}"] = _summary(times)
        print(f"engine rows={rows}", result["engine_step_ms"][f"rows={rows}"], flush=True)
    report(result, args.out)


def _summary(times: dict[str, list[float]]) -> dict:
    kernel, sdpa = statistics.median(times["kernel"]), statistics.median(times["sdpa"])
    return {"kernel": round(kernel, 2), "sdpa": round(sdpa, 2), "speedup": round(sdpa / kernel, 2)}


if __name__ == "__main__":
    main()
