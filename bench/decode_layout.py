"""Which float32 weight layout decodes one row fastest? `infer/layout.py`'s choice per layer.

A model prepared for generation (`prepare_for_generation`) decodes one token at a time through
the serving engine's slot cache; each linear layer either multiplies by W^T stored contiguous
(`addmm`) or by the weight packed once in oneDNN's blocked layout. The two are timed in turn on
the same model, alternating, per token, for the demo's shape (192 wide) and GPT-2 124M's (random
weights; the head alone is 154 MB, so each step reads its weights from memory):

    python bench/decode_layout.py [--shapes demo,124m] [--rounds 5] [--tokens 32] [--threads 1]

What the layer does by default (`PACKED_ONE_ROW_FROM`) is reported beside the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from baselines import GPT2_124M, report

from scratchlm.infer.kv import SlotCache
from scratchlm.infer.layout import BATCHED_FROM, TransposedLinear, prepare_for_generation
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT

SHAPES = {
    "demo": dict(norm="rmsnorm", position="rope", mlp="swiglu", block_size=128, n_layer=4,
                 n_head=4, n_embd=192, vocab_size=2048),
    "124m": GPT2_124M,
}  # fmt: skip


@torch.no_grad()
def ms_per_token(model: GPT, tokens: int) -> float:
    cache = SlotCache(model.cfg, 1)
    cache.reserve(16 + tokens)
    cache.plan([(0, 16)])
    model.hidden_states(torch.arange(16)[None], cache)  # the cache counts what it read
    start = time.perf_counter()
    for _ in range(tokens):
        cache.plan([(0, 1)])
        h = model.hidden_states(torch.tensor([[5]]), cache)
        model.head(h[0, -1:]).argmax()
    return (time.perf_counter() - start) * 1000 / tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="demo,124m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"bench": "decode_layout", "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}  # fmt: skip
    for shape in args.shapes.split(","):
        torch.manual_seed(0)
        model = prepare_for_generation(GPT(ModelConfig(**SHAPES[shape])).eval())
        layers = [m for m in model.modules() if isinstance(m, TransposedLinear)]
        default = [m.packed_from for m in layers]
        times: dict[str, list[float]] = {"packed": [], "W^T": [], "default": []}
        ms_per_token(model, 4)  # warm up
        for _ in range(args.rounds):
            for name in times:
                for m, d in zip(layers, default, strict=True):
                    m.packed_from = {"packed": 1, "W^T": BATCHED_FROM, "default": d}[name]
                times[name].append(ms_per_token(model, args.tokens))
        result[shape] = {k: round(statistics.median(v), 2) for k, v in times.items()}
        result[shape]["packed_for_one_row"] = f"{default.count(1)} of {len(layers)} layers"
        print(shape, result[shape], flush=True)
    report(result)


if __name__ == "__main__":
    main()
