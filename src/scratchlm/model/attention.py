"""Causal multi-head self-attention, with grouped key/value heads, QK-norm, RoPE and a cache."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.cache import Cache
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import RMSNorm, apply_rope


class CausalSelfAttention(nn.Module):
    """Each position attends to itself and earlier positions only.

    Queries have `n_head` heads; keys and values `n_kv_head` (GQA: each key/value head is
    shared by n_head / n_kv_head query heads; MQA: one for all). q, k and v come from one matmul.
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.sizes = [q_size, kv_size, kv_size]
        self.qkv = nn.Linear(cfg.n_embd, q_size + 2 * kv_size, bias=cfg.bias)
        self.proj = nn.Linear(q_size, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """x (B, T, C). `mask` (B, 1, T, S) says which keys each query may see; None means
        plain causal attention over these T positions (the training fast path)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.sizes, dim=-1)
        # (B, T, heads * d) -> (B, heads, T, d): each head attends on its own
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # generation: the cache stores k and v, and knows which keys each query sees
        y = self._attend(q, k, v, mask) if cache is None else cache.attend(self.layer, q, k, v)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_drop(self.proj(y))

    def _attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        if self.n_kv_head != self.n_head:  # share each key/value head among its query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.dropout if self.training else 0.0
        # Flash / memory-efficient kernels where available; the maths of attention_reference.
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out; tests compare SDPA against it."""
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~causal, float("-inf"))
    return att.softmax(dim=-1) @ v
