"""Generation benchmark: greedy decode tokens/s and time to first token on CPU, float32.

scratchlm's generator (infer/generate.py, KV cache) against HF transformers' `generate`
(greedy, use_cache=True) on the same weights: a GPT-2-layout model with random weights is
written by `export_hf` (what `scratchlm export hf` does) and loaded back by
`AutoModelForCausalLM`. Shapes: ~10M and GPT-2 124M. Rounds alternate ours and HF; each side
reports its median round. The greedy tokens must be identical. Prints JSON.

    python bench/generate.py [--shapes 10m,124m] [--rounds 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from scratchlm.config import ModelConfig, build
from scratchlm.export.hf import export_hf
from scratchlm.infer.generate import Row, generate_rows
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.sampling import Sampling
from scratchlm.model.gpt import GPT

SHAPES = {
    "10m": dict(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384),
    "124m": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def ours(model: GPT, prompt: list[int], n: int) -> tuple[list[int], float, float]:
    """(tokens, seconds to the first token, seconds for the rest)."""
    start = time.perf_counter()
    row = Row(prompt, n, Sampling(temperature=0))
    first = None
    for _ in generate_rows(model, None, [row]):
        first = first or time.perf_counter()
    return row.tokens, first - start, time.perf_counter() - first


class FirstToken:
    """An HF streamer that notes when the first generated token arrives (the first `put` is
    the prompt itself)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


def hf(model, prompt: list[int], n: int) -> tuple[list[int], float, float]:
    streamer = FirstToken()
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            use_cache=True,
            streamer=streamer,
            eos_token_id=None,  # random weights: never stop early, on either side
            pad_token_id=0,
        )
    end = time.perf_counter()
    return out[0, len(prompt) :].tolist(), streamer.first - start, end - streamer.first


def bench_shape(key: str, rounds: int, n: int, prompt_len: int) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(build(ModelConfig, {"preset": "gpt2-124m", **SHAPES[key]})).eval()
    params = model.num_params(non_embedding=False)
    folder = tempfile.mkdtemp()
    export_hf(model, None, folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    prepare_for_generation(model)  # what `scratchlm generate / chat / serve` run
    prompt = torch.randint(SHAPES[key]["vocab_size"], (prompt_len,)).tolist()
    sides = {"scratchlm": lambda: ours(model, prompt, n), "hf": lambda: hf(theirs, prompt, n)}
    for run in sides.values():
        run()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    outputs = {}
    for _ in range(rounds):
        for name, run in sides.items():  # alternate A, B: both see the same machine load
            tokens, ttft, rest = run()
            times[name].append((ttft, rest))
            outputs[name] = tokens
    decode = {k: round((n - 1) / statistics.median(r for _, r in v), 1) for k, v in times.items()}
    ttft = {k: round(1000 * statistics.median(t for t, _ in v), 1) for k, v in times.items()}
    return {
        "params": params,
        "prompt_tokens": prompt_len,
        "new_tokens": n,
        "decode_tokens_per_second": decode,
        "time_to_first_token_ms": ttft,
        "decode_ratio_vs_hf": round(decode["scratchlm"] / decode["hf"], 3),
        "greedy_identical": outputs["scratchlm"] == outputs["hf"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="10m,124m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "bench": "generate_greedy_batch1",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    for key in args.shapes.split(","):
        result[key] = bench_shape(key, args.rounds, args.new_tokens, args.prompt_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
