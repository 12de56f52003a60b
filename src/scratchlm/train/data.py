"""Batches of (input, target) windows from memory-mapped token shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scratchlm.errors import StageError


class TokenData:
    """The train or validation tokens of a `tokenize` output folder, memory-mapped (never loaded)."""

    def __init__(self, tokens_dir: Path, split: str, files: list[str], dtype: str, block_size: int):
        self.arrays = [np.memmap(tokens_dir / f, dtype=np.dtype(dtype), mode="r") for f in files]
        self.block_size = block_size
        # A window needs block_size + 1 tokens: inputs are [i, i+T), targets [i+1, i+T+1).
        self.windows = [max(len(a) - block_size, 0) for a in self.arrays]
        self.total_windows = sum(self.windows)
        if self.total_windows == 0:
            tokens = sum(len(a) for a in self.arrays)
            raise StageError(
                f"{split} split has {tokens} tokens, fewer than model.block_size + 1 = {block_size + 1}: "
                "use more text, a smaller model.block_size, or a larger tokenize.val_fraction"
            )

    def batch(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` windows at uniformly random positions, drawn from `generator`."""
        starts = torch.randint(self.total_windows, (batch_size,), generator=generator).tolist()
        rows = []
        for s in starts:
            shard = 0
            while s >= self.windows[shard]:
                s -= self.windows[shard]
                shard += 1
            rows.append(np.asarray(self.arrays[shard][s : s + self.block_size + 1], dtype=np.int64))
        xy = torch.from_numpy(np.stack(rows))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
