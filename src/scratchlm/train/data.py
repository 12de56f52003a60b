"""Batches of (input, target) windows from memory-mapped token shards, in a resumable order.

The shards of a split are one long token stream. It is cut into windows of block_size + 1
tokens that start every block_size tokens (inputs [s, s+T), targets [s+1, s+T+1)), so an
epoch sees every token once. Each epoch visits the windows in a fresh permutation drawn from
(seed, epoch): "sequential-shuffled". With several processes, each global batch of
batch_size x world windows is cut into one disjoint slice per rank. The loader's whole state
is (epoch, position): saving and restoring it resumes the exact same sequence of batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scratchlm.errors import StageError
from scratchlm.tokenizer.shards import TokenStream


class TokenData:
    """Windows of one split, served in (seed, epoch)-shuffled order, one rank's share at a time."""

    def __init__(
        self,
        tokens_dir: Path,
        split: str,
        files: list[str],
        dtype: str,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.stream = TokenStream(tokens_dir, files, dtype)
        self.block_size, self.seed, self.rank, self.world = block_size, seed, rank, world
        self.num_windows = max(len(self.stream) - 1, 0) // block_size
        if self.num_windows == 0:
            raise StageError(
                f"{split} split has {len(self.stream)} tokens, fewer than model.block_size + 1 = {block_size + 1}: "
                "use more text, a smaller model.block_size, or a larger tokenize.val_fraction"
            )
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_windows, generator=gen)

    def _window(self, index: int) -> np.ndarray:
        return self.stream.read(index * self.block_size, self.block_size + 1)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's `batch_size` windows of the next global batch."""
        indices = []
        for i in range(batch_size * self.world):
            if self.position == self.num_windows:  # epoch done: reshuffle
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            if i // batch_size == self.rank:
                indices.append(int(self._order[self.position]))
            self.position += 1
        xy = torch.from_numpy(np.stack([self._window(i) for i in indices]))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def fixed_batches(self, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same `count` batches every time (the first windows of a fixed permutation):
        validation compares like with like across evaluations."""
        order = self._permutation(-1)
        picks = [int(order[i % self.num_windows]) for i in range(count * batch_size)]
        batches = []
        for b in range(count):
            xy = torch.from_numpy(
                np.stack([self._window(i) for i in picks[b * batch_size : (b + 1) * batch_size]])
            )
            batches.append((xy[:, :-1].contiguous(), xy[:, 1:].contiguous()))
        return batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
