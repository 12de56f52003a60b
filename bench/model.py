"""Model benchmark: forward + backward tokens/s on CPU, float32, for a 10M and a 124M shape.

Three implementations of the same GPT-2 layout (LayerNorm with bias, learned positions, tanh
GELU, tied embeddings), with the same random batches: scratchlm's GPT, a nanoGPT-style
baseline (bench/baselines.py) and HF transformers' GPT2LMHeadModel (its default SDPA
attention). Rounds alternate A, B, C; each reports its best round. Prints JSON.

    python bench/model.py [--shapes 10m,124m] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from baselines import NanoGPT

from scratchlm.config import ModelConfig, build
from scratchlm.model.gpt import GPT

SHAPES = {  # model shape, then the batch each step sees
    "10m": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384, batch=8, steps=4),
    "124m": dict(
        vocab_size=50257, block_size=256, n_layer=12, n_head=12, n_embd=768, batch=2, steps=2
    ),
}


def make_models(shape: dict) -> dict[str, torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel

    dims = {k: shape[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
    torch.manual_seed(0)
    ours = GPT(build(ModelConfig, {"preset": "gpt2-124m", **dims}))
    base = NanoGPT(**dims, bias=True)
    hf_cfg = GPT2Config(vocab_size=dims["vocab_size"], n_positions=dims["block_size"], n_layer=dims["n_layer"],
                        n_head=dims["n_head"], n_embd=dims["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    hf = GPT2LMHeadModel(hf_cfg)
    return {"scratchlm": ours.train(), "nanogpt_style": base.train(), "hf_gpt2": hf.train()}


def step(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if name == "hf_gpt2":
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
    else:
        _, loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)


def bench_shape(key: str, rounds: int) -> dict:
    shape = SHAPES[key]
    models = make_models(shape)
    gen = torch.Generator().manual_seed(0)
    xy = torch.randint(
        shape["vocab_size"], (shape["batch"], shape["block_size"] + 1), generator=gen
    )
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    for name, model in models.items():
        step(name, model, x, y)  # warm-up
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(shape["steps"]):
                step(name, model, x, y)
            best[name] = min(best[name], (time.perf_counter() - start) / shape["steps"])
    tokens = shape["batch"] * shape["block_size"]
    tok_s = {n: round(tokens / t) for n, t in best.items()}
    flops = models["scratchlm"].flops_per_token()
    return {
        "params_non_embedding": models["scratchlm"].num_params(),
        "tokens_per_step": tokens,
        "fwd_bwd_tokens_per_second": tok_s,
        "model_gflops_per_second_scratchlm": round(tok_s["scratchlm"] * flops / 1e9, 1),
        "ratio_vs_nanogpt_style": round(tok_s["scratchlm"] / tok_s["nanogpt_style"], 3),
        "ratio_vs_hf_gpt2": round(tok_s["scratchlm"] / tok_s["hf_gpt2"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="10m,124m")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    result = {
        "bench": "model_fwd_bwd",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    for key in args.shapes.split(","):
        result[key] = bench_shape(key, args.rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
