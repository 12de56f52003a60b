"""Training-step throughput: scratchlm's GPT against a nanoGPT-style baseline of the same shape.

Both do the same work per step (forward, backward, AdamW) on the same random batches; we
alternate A and B for several rounds so a busy machine slows both alike. Prints JSON.

    python bench/train_step.py [--shape demo|10m] [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn as nn
from baselines import NanoGPT

from scratchlm.config import ModelConfig
from scratchlm.model.gpt import GPT

SHAPES = {
    "demo": dict(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=192, batch=16),
    "10m": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384, batch=8),
}


def time_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for x, y in batches:
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="demo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    shape = dict(SHAPES[args.shape])
    batch = shape.pop("batch")
    torch.manual_seed(0)
    ours = GPT(ModelConfig(**shape))
    base = NanoGPT(**shape, bias=False)
    gen = torch.Generator().manual_seed(0)

    def random_batch() -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.randint(shape["vocab_size"], (batch, shape["block_size"] + 1), generator=gen)
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    batches = [random_batch() for _ in range(args.steps)]
    time_steps(ours, batches[:2])  # warm up allocators and kernels
    time_steps(base, batches[:2])
    times: dict[str, list[float]] = {"scratchlm": [], "nanogpt_style": []}
    for _ in range(args.rounds):
        times["scratchlm"].append(time_steps(ours, batches))
        times["nanogpt_style"].append(time_steps(base, batches))
    tokens = args.steps * batch * shape["block_size"]
    best = {k: min(v) for k, v in times.items()}
    flops = ours.flops_per_token()
    print(
        json.dumps(
            {
                "bench": "train_step",
                "shape": args.shape,
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "params": ours.num_params(),
                "tokens_per_second": {k: round(tokens / t) for k, t in best.items()},
                "model_gflops_per_second": {
                    k: round(tokens * flops / t / 1e9, 1) for k, t in best.items()
                },
                "ratio_scratchlm_over_baseline": round(
                    best["nanogpt_style"] / best["scratchlm"], 3
                ),
                "rounds": args.rounds,
                "note": "best of rounds, A and B alternated",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
