"""Baselines the benchmarks compare against, written the way their authors write them, and
where the benchmarks find the team's shared data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class NanoGPTBlock(nn.Module):
    """nanoGPT's block as model.py writes it (c_attn / c_proj / c_fc, nn.GELU() - the exact
    erf GELU - and SDPA)."""

    def __init__(self, d: int, h: int, bias: bool):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        bias: bool = True,
    ):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(NanoGPTBlock(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# The team's data (Gutenberg books, WikiText-2) beside the checkout, or where the variable says.
SHARED_DATA = Path(
    os.environ.get("SCRATCHLM_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def shared_data(bench: str, *needed: str) -> Path:
    """SHARED_DATA, if it holds the `needed` folders; else the benchmark is skipped: one JSON
    line that says what is missing, and exit status 0, so that `make bench` runs the rest."""
    missing = [str(SHARED_DATA / name) for name in needed if not (SHARED_DATA / name).exists()]
    if missing:
        why = f"needs {', '.join(missing)} (the team's shared data; set SCRATCHLM_SHARED_DATA)"
        print(json.dumps({"bench": bench, "skipped": why}))
        sys.exit(0)
    return SHARED_DATA


def report(result: dict, out: str | None = None) -> None:
    """Print a benchmark's result as JSON, and write it to `out` too when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
