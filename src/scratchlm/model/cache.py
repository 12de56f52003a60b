"""The key/value cache for generation: the prompt in one pass, then one token at a time.

A cache is what the model hands each step's attention to. It answers two questions, so the
model never needs to know how the keys are stored:

    positions = cache.begin(idx, attention_mask)   the positions of the new tokens
    y = cache.attend(layer, q, k, v)               store the new keys and values, attend
    cache.end(T)                                   the step is done

`KVCache` here is the simple one: a (B, T) batch whose rows may have prompts of different
lengths, left-padded, with `key_mask` marking which cached positions hold real tokens. Each
row's positions count its own real tokens, so padding changes nothing about the real ones.
The serving engine has its own (infer/kv.py: a slot per row, real tokens only).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from scratchlm.model.config import ModelConfig


class Cache(Protocol):
    def begin(self, idx: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor: ...

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...

    def end(self, steps: int) -> None: ...


class KVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.max_len = max_len or cfg.block_size
        shape = (cfg.n_layer, batch, cfg.kv_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_mask = torch.zeros(batch, self.max_len, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far (the same for every row)
        self.block_size = cfg.block_size
        self._mask: torch.Tensor | None = None  # this step's (B, 1, T, S) attention mask

    def begin(self, idx: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Positions (B, T) of the next T tokens; `attention_mask` (B, T) False on padding."""
        B, T = idx.shape
        start, device = self.length, idx.device
        if start + T > self.block_size:
            raise ValueError(f"{start + T} positions are more than block_size={self.block_size}")
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        keys = self.extend_mask(attention_mask.bool())
        # A row's position counts its real tokens: left padding leaves real positions as they were.
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        rows = torch.arange(start, start + T, device=device)[:, None]
        cols = torch.arange(keys.size(1), device=device)[None]
        # A padding query sees no real key; let it see itself so softmax stays finite.
        self._mask = ((rows >= cols)[None] & keys[:, None, :] | (rows == cols))[:, None]
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = self.update(layer, k, v)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=self._mask, enable_gqa=k.size(1) != q.size(1)
        )

    def end(self, steps: int) -> None:
        self.advance(steps)

    def extend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Record which of the next T positions are real; return the mask up to them."""
        end = self.length + mask.size(1)
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {end} were asked for")
        self.key_mask[:, self.length : end] = mask
        return self.key_mask[:, :end]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys and values of `layer`; return all of them so far."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (a generation drops the rows that have finished)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.key_mask = self.key_mask[rows]
