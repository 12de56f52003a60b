"""AdamW with decay only on matrices, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from scratchlm.config import PretrainSettings


def make_optimizer(
    model: torch.nn.Module, s: PretrainSettings, device: torch.device
) -> torch.optim.AdamW:
    # Weight decay shrinks matrices (embeddings, linear weights) towards zero; decaying
    # gains and biases (1-D) only hurts, as GPT-2 and nanoGPT found.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), fused=fused)


def lr_at(step: int, s: PretrainSettings) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to `lr * min_lr_ratio`."""
    min_lr = s.lr * s.min_lr_ratio
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if step >= s.max_steps:
        return min_lr
    progress = (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - min_lr)
