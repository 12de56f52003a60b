"""Evaluation benchmark: multiple-choice scoring speed and agreement against EleutherAI lm-eval.

One model (a random 10M GPT-2 layout, exported with export_hf) and the same requests: built-in
cloze items over the Python docs. scratchlm's `loglikelihoods` against lm-eval's HFLM
`loglikelihood` on the exported folder, at the same batch size. Rounds alternate; each side
reports its best round. Prints JSON: requests/s of both, their ratio and the largest
log-likelihood difference.

    python bench/eval.py [--items 200] [--batch 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from scratchlm.config import ModelConfig, TokenizerSettings, build
from scratchlm.eval.choice import encode_pair, loglikelihoods
from scratchlm.eval.tasks import cloze
from scratchlm.export.hf import export_hf
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.train import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from pydoc_data.topics import topics

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    texts = list(topics.values())
    tok = train_tokenizer(texts[:60], TokenizerSettings(vocab_size=4096), progress=False)
    torch.manual_seed(0)
    cfg = build(ModelConfig, {"preset": "gpt2-tiny", "vocab_size": tok.vocab_size, "n_layer": 6,
                              "n_head": 6, "n_embd": 384, "block_size": 256})  # fmt: skip
    model = GPT(cfg).eval()
    items = cloze(texts[60:], args.items, seed=0)
    pairs = [(it.context, it.delimiter + c) for it in items for c in it.choices]
    folder = tempfile.mkdtemp()
    export_hf(model, tok, folder)
    hflm = HFLM(pretrained=folder, device="cpu", batch_size=args.batch, dtype="float32")
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

    def ours() -> list[float]:
        return loglikelihoods(model, [encode_pair(tok, c, x) for c, x in pairs], args.batch)

    def theirs() -> list[float]:
        return [ll for ll, _ in hflm.loglikelihood(requests, disable_tqdm=True)]

    best = {"scratchlm": float("inf"), "lm_eval_hflm": float("inf")}
    results = {}
    for _ in range(args.rounds):
        for name, fn in (("scratchlm", ours), ("lm_eval_hflm", theirs)):
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    diff = max(
        abs(a - b) for a, b in zip(results["scratchlm"], results["lm_eval_hflm"], strict=True)
    )
    print(json.dumps({
        "requests": len(pairs), "batch": args.batch, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "parameters": model.num_params(),
        "requests_per_second": {k: round(len(pairs) / v, 1) for k, v in best.items()},
        "speedup_vs_lm_eval": round(best["lm_eval_hflm"] / best["scratchlm"], 2),
        "max_abs_loglik_difference": diff,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
