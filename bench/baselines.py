"""Baselines the benchmarks compare against, written the way their authors write them; where
the benchmarks find the team's shared data; and what several of them share (GPT-2 124M's
shape, timing the engine's decode steps, the JSON report)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.infer.engine import Engine
from scratchlm.infer.row import Row
from scratchlm.model.config import MODEL_PRESETS

# GPT-2 124M as the decode benchmarks build it (random weights, GPT-2's vocabulary unpadded)
GPT2_124M = MODEL_PRESETS["gpt2-124m"] | {"vocab_size": 50257}


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


def decode_step_ms(engine: Engine, rows: list[Row], skip: int = 1) -> float:
    """Median ms of the engine's steps once `rows` are added and the first `skip` steps (the
    prompts; longer contexts) are done, until every row finishes (the last step, which only
    lets rows go, left out)."""
    for row in rows:
        engine.add(row)
    for _ in range(skip):
        engine.step()
    times = []
    while engine.busy:
        start = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[:-1] or times)
