"""The small parts of a transformer block: norms, the MLP variants, rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as Llama does) and cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class MLP(nn.Module):
    """The position-wise feed-forward network.

    gelu:   proj(gelu(fc(x)))                  GPT-2 (tanh approximation, as GPT-2 used)
    relu2:  proj(relu(fc(x))^2)                modded-nanogpt / Primer
    swiglu: proj(silu(gate(x)) * up(x))        Llama; gate and up are one matmul (`fc`)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        width = 2 * cfg.hidden if cfg.mlp == "swiglu" else cfg.hidden
        self.fc = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.proj(h))


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, (block_size, head_dim), in float32.

    Frequencies theta^(-2i/d) as in RoFormer; the two halves of each head rotate together
    ("rotate_half", the layout of HF Llama), so weights convert without permutation.
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+d/2}) pair of `x` (B, heads, T, d) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
