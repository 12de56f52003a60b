"""The serving engine's KV cache: one slot per row, holding that row's real tokens only.

    k[layer, slot, position, kv_head, :]      positions 0 .. lengths[slot] - 1 are the row's

A step of the engine is a flat list of new tokens, `pieces` of (slot, count) laid end to end:
first the rows that decode one token, then the chunks of prompts being read. The model runs
its linear layers over that flat list (no padding at all) and hands attention to `attend`:

- the one-token rows attend together: float32 on the CPU in one call of a C kernel that reads
  each slot up to its own length (infer/native.py), elsewhere in one SDPA call over their
  slots' keys with each slot's own length masked in (rows are kept in slots 0..n-1, so the
  keys are a view, never a copy);
- each prompt chunk attends alone over its own slot, causally.

No row ever re-reads another's tokens or waits for another's padding. The slots' length grows
by doubling up to block_size, so a cache for 32 rows of a 1024-token model starts small.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from scratchlm.infer import native
from scratchlm.model.config import ModelConfig


class SlotCache:
    def __init__(
        self,
        cfg: ModelConfig,
        slots: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        capacity: int = 64,
    ):
        self.cfg, self.slots, self.device, self.dtype = cfg, slots, device, dtype
        self.capacity = min(capacity, cfg.block_size)
        self.k = self._empty(self.capacity)
        self.v = self._empty(self.capacity)
        self.lengths = [0] * slots
        self._plan: _Plan | None = None
        # float32 on the CPU: the one-token rows attend in a C kernel (infer/native.py)
        self.kernel = self.k.device.type == "cpu" and dtype == torch.float32 and native.available()

    def _empty(self, capacity: int) -> torch.Tensor:
        c = self.cfg
        shape = (c.n_layer, self.slots, capacity, c.kv_heads, c.head_dim)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def reserve(self, length: int) -> None:
        """Make every slot hold at least `length` positions (at most block_size)."""
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.cfg.block_size)
        for name in ("k", "v"):
            new = self._empty(capacity)
            new[:, :, : self.capacity] = getattr(self, name)
            setattr(self, name, new)
        self.capacity = capacity

    def move(self, src: int, dst: int) -> None:
        """Slot `src`'s row now lives in slot `dst` (the engine keeps its rows in 0..n-1)."""
        n = self.lengths[src]
        self.k[:, dst, :n] = self.k[:, src, :n]
        self.v[:, dst, :n] = self.v[:, src, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0

    # ------------------------------------------------------------------ the model's side

    def plan(self, pieces: list[tuple[int, int]]) -> None:
        """The next step: `pieces` of (slot, new tokens), one-token pieces first."""
        self._plan = _Plan(pieces, self.lengths, self.capacity, self.device)

    def abandon(self) -> None:
        """Forget a planned step that failed (nothing of it counts)."""
        self._plan = None

    def begin(self, idx: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        plan = self._plan
        if plan is None or idx.shape != (1, plan.tokens) or attention_mask is not None:
            raise ValueError("SlotCache: call plan() first, then the model on (1, tokens)")
        return plan.positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, heads, N, d), k and v (1, kv_heads, N, d) for the step's N flat tokens."""
        plan = self._plan
        kc, vc = self.k[layer], self.v[layer]  # (slots, capacity, kv_heads, d)
        flat = (-1, kc.size(2), kc.size(3))
        kc.view(flat).index_copy_(0, plan.where, k[0].transpose(0, 1))
        vc.view(flat).index_copy_(0, plan.where, v[0].transpose(0, 1))
        gqa = k.size(1) != q.size(1)
        parts = []
        if plan.decode:
            parts.append(self._attend_decode(plan, q[0, :, : len(plan.decode)], kc, vc, gqa))
        for offset, slot, start, n in plan.chunks:
            keys = kc[slot, : start + n].transpose(0, 1)[None]
            values = vc[slot, : start + n].transpose(0, 1)[None]
            qc = q[:, :, offset : offset + n]
            if start == 0:
                y = F.scaled_dot_product_attention(qc, keys, values, is_causal=True, enable_gqa=gqa)
            else:  # a later chunk: each query sees the whole earlier prompt and itself
                mask = torch.arange(start + n, device=q.device)[None] <= (
                    start + torch.arange(n, device=q.device)[:, None]
                )
                y = F.scaled_dot_product_attention(qc, keys, values, attn_mask=mask, enable_gqa=gqa)
            parts.append(y[0])
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))[None]

    def _attend_decode(
        self, plan: _Plan, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, gqa: bool
    ) -> torch.Tensor:
        """The one-token rows together: q (heads, rows, d) -> (heads, rows, d)."""
        if self.kernel:
            out = native.decode_attention(q.transpose(0, 1), kc, vc, plan.decode_rows)
            if out is not None:
                return out.transpose(0, 1)
        n, S, mask, scatter = plan.sdpa_decode
        keys, values = kc[:n, :S].transpose(1, 2), vc[:n, :S].transpose(1, 2)
        qd = q.transpose(0, 1).unsqueeze(2)  # (rows, heads, 1, d)
        if scatter is not None:  # some slots are reading a prompt this step
            qd = q.new_zeros(n, *qd.shape[1:]).index_copy_(0, scatter, qd)
        y = F.scaled_dot_product_attention(qd, keys, values, attn_mask=mask, enable_gqa=gqa)
        if scatter is not None:
            y = y.index_select(0, scatter)
        return y.squeeze(2).transpose(0, 1)

    def end(self, steps: int) -> None:
        for slot, n in self._plan.pieces:
            self.lengths[slot] += n
        self._plan = None


class _Plan:
    """Where a step's tokens go and what each one sees, computed once for all layers."""

    def __init__(
        self,
        pieces: list[tuple[int, int]],
        lengths: list[int],
        capacity: int,
        device: torch.device | str,
    ):
        self.pieces = pieces
        self.decode = [slot for slot, n in pieces if n == 1]
        if any(n > 1 for _, n in pieces[: len(self.decode)]) or any(
            n == 1 for _, n in pieces[len(self.decode) :]
        ):
            raise ValueError("one-token pieces come first")
        positions, where = [], []
        for slot, n in pieces:
            start = lengths[slot]
            if start + n > capacity:
                raise ValueError(f"slot {slot} holds {capacity} positions; {start + n} asked")
            positions.extend(range(start, start + n))
            where.extend(range(slot * capacity + start, slot * capacity + start + n))
        self.tokens = len(positions)
        self.positions = torch.tensor([positions], device=device)
        self.where = torch.tensor(where, device=device)
        self.chunks, offset = [], len(self.decode)
        for slot, n in pieces[len(self.decode) :]:
            self.chunks.append((offset, slot, lengths[slot], n))
            offset += n
        self.device = device
        self.sees = [lengths[s] + 1 for s in self.decode]  # each one-token row's positions

    @functools.cached_property
    def decode_rows(self) -> native.DecodeRows:
        """The one-token rows for the C kernel: each one's slot and how many positions it sees."""
        return native.DecodeRows(self.decode, self.sees)

    @functools.cached_property
    def sdpa_decode(self) -> tuple[int, int, torch.Tensor, torch.Tensor | None]:
        """The one-token rows for one SDPA call over slots 0..n-1: n, the keys' length, each
        slot's own length as a mask, and where the rows sit among the slots (None: in order)."""
        n = max(self.decode) + 1
        sees = [1] * n  # a slot reading a prompt this step is attended and thrown away
        for slot, m in zip(self.decode, self.sees, strict=True):
            sees[slot] = m
        keys = max(sees)
        mask = torch.arange(keys, device=self.device)[None] < torch.tensor(sees, device=self.device)[:, None]  # fmt: skip
        scatter = None
        if self.decode != list(range(n)):
            scatter = torch.tensor(self.decode, device=self.device)
        return n, keys, mask[:, None, None], scatter  # mask (slots, 1, 1, keys)
