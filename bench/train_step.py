"""Training-step throughput and MFU: scratchlm's step against a step written the nanoGPT way.

First measures this machine's float32 matmul peak (the MFU denominator). Then, per shape, both
do the same work per step (forward, backward, clip to 1.0, AdamW, zero_grad) on the same
random batches: ours is `scratchlm.train.optim.make_optimizer`'s AdamW (fused) around our GPT,
the baseline is nanoGPT's model and optimizer call (bench/baselines.py; AdamW with foreach, as
nanoGPT uses off CUDA). Rounds alternate A and B; best round each. Prints JSON.

    python bench/train_step.py [--shapes shakespeare-char,10m,124m] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from baselines import NanoGPT

from scratchlm.config import ModelConfig, PretrainSettings
from scratchlm.model.gpt import GPT
from scratchlm.train.mfu import measure_matmul_peak
from scratchlm.train.optim import make_optimizer

SHAPES = {  # nanoGPT's CPU shakespeare_char recipe, the 10M GPU recipe, GPT-2 small
    "shakespeare-char": dict(
        vocab_size=66, block_size=64, n_layer=4, n_head=4, n_embd=128, batch=12, steps=40
    ),
    "10m": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384, batch=8, steps=4),
    "124m": dict(
        vocab_size=50304, block_size=256, n_layer=12, n_head=12, n_embd=768, batch=4, steps=2
    ),
}


def ours_step(model: GPT, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()


def nanogpt_step(
    model: NanoGPT, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def nanogpt_optimizer(model: NanoGPT) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))  # nanoGPT: fused only on CUDA


def bench_shape(key: str, rounds: int, peak: float) -> dict:
    shape = dict(SHAPES[key])
    batch, steps = shape.pop("batch"), shape.pop("steps")
    torch.manual_seed(0)
    ours = GPT(ModelConfig(**shape, bias=False)).train()
    base = NanoGPT(**shape, bias=False).train()
    opts = {
        "scratchlm": make_optimizer(ours, PretrainSettings(), torch.device("cpu")),
        "nanogpt_way": nanogpt_optimizer(base),
    }
    runs = {"scratchlm": (ours_step, ours), "nanogpt_way": (nanogpt_step, base)}
    gen = torch.Generator().manual_seed(0)
    xy = [
        torch.randint(shape["vocab_size"], (batch, shape["block_size"] + 1), generator=gen)
        for _ in range(steps)
    ]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in xy]
    for name, (fn, model) in runs.items():
        fn(model, opts[name], *batches[0])  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, (fn, model) in runs.items():
            start = time.perf_counter()
            for x, y in batches:
                fn(model, opts[name], x, y)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    tokens = batch * shape["block_size"]
    flops = ours.flops_per_token()
    tok_s = {n: round(tokens / t) for n, t in best.items()}
    return {
        "tokens_per_step": tokens,
        "tokens_per_second": tok_s,
        "mfu": {n: round(flops * v / peak, 3) for n, v in tok_s.items()},
        "ratio_scratchlm_over_nanogpt_way": round(best["nanogpt_way"] / best["scratchlm"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    peak = max(measure_matmul_peak(torch.device("cpu"), size=1024, seconds=1.0) for _ in range(3))
    result = {
        "bench": "train_step",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "fp32_matmul_peak_gflops": round(peak / 1e9, 1),
    }
    for key in args.shapes.split(","):
        result[key] = bench_shape(key, args.rounds, peak)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
