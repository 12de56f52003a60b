"""Compute-optimal sizing (Chinchilla): for a compute budget C, train N parameters on D = 20 N
tokens, since C = 6 N D (Hoffmann et al. 2022, approach 1, rounded)."""

from __future__ import annotations

import math
from typing import Any

import yaml

from scratchlm.train.mfu import GPU_PEAKS

TOKENS_PER_PARAM = 20
# The Llama layout: with SwiGLU at 8/3 width, a block still holds 12 d^2 parameters.
LLAMA_LAYOUT = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False)


def shape_for(params: float) -> dict[str, int]:
    """A GPT shape of about `params` non-embedding parameters (12 L d^2), with width 64 per
    layer of depth (d = 64 L, as nanochat sizes its models) and 64-wide heads."""
    layers = max(1, round((params / (12 * 64**2)) ** (1 / 3)))
    width = 64 * layers
    return {"n_layer": layers, "n_embd": width, "n_head": max(1, width // 64)}


def plan(flops: float | None = None, hours: float | None = None, gpus: int = 1, gpu: str = "H100", mfu: float = 0.4,
         block_size: int = 1024, tokens_per_step: int = 524288) -> dict[str, Any]:  # fmt: skip
    """The model size, token count and recipe sections for a budget in FLOPs or GPU-hours."""
    if flops is None:
        if hours is None:
            raise ValueError("give a budget: flops, or hours (with gpus, gpu, mfu)")
        if gpu not in GPU_PEAKS:
            raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAKS)}")
        flops = hours * 3600 * gpus * GPU_PEAKS[gpu] * mfu
    params = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    shape = shape_for(params)
    actual = 12 * shape["n_layer"] * shape["n_embd"] ** 2
    tokens = TOKENS_PER_PARAM * actual
    steps = max(1, round(tokens / tokens_per_step))
    hours_needed = 6 * actual * tokens / (gpus * GPU_PEAKS.get(gpu, GPU_PEAKS["H100"]) * mfu) / 3600
    recipe = {
        # Every key written out: a preset beside other dimensions would only confuse.
        "model": {**LLAMA_LAYOUT, **shape, "block_size": block_size},
        "pretrain": {
            "tokens_per_step": tokens_per_step,
            "max_steps": steps,
            "schedule": "wsd",
            "warmup_steps": min(1000, steps // 20),
        },
    }
    return {
        "flops": flops,
        "params": actual,
        "tokens": tokens,
        "steps": steps,
        "hours": hours_needed,
        "gpus": gpus,
        "gpu": gpu,
        "mfu": mfu,
        "recipe": recipe,
    }


def describe(p: dict[str, Any]) -> str:
    return (
        f"budget {p['flops']:.3g} FLOPs -> {p['params'] / 1e6:,.1f}M non-embedding parameters "
        f"on {p['tokens'] / 1e9:,.2f}B tokens ({TOKENS_PER_PARAM} per parameter), {p['steps']:,} steps; "
        f"about {p['hours']:.2f} h on {p['gpus']} x {p['gpu']} at {p['mfu']:.0%} MFU\n"
        "recipe sections (merge into your recipe; add curate/tokenizer for your data):\n"
        + yaml.safe_dump(p["recipe"], sort_keys=False)
    )
