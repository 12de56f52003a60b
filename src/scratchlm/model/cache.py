"""The key/value cache for generation: the prompt in one pass, then one token at a time.

Rows of a batch may have prompts of different lengths: they are left-padded, and
`key_mask` marks which cached positions hold real tokens. Each row's positions count its
own real tokens, so padding changes nothing about the real ones.
"""

from __future__ import annotations

import torch

from scratchlm.model.config import ModelConfig


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
