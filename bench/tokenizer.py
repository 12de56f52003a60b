"""Tokenizer benchmark: our BPE trainer and encoder against HF `tokenizers` and raw tiktoken.

On ../shared/data/gutenberg (a 10 MB training slice, a 2 MB held-out slice), in one run:
  1. training wall time at vocab 16,384, ours vs HF BpeTrainer (same GPT-4 split, same
     documents), one process each and then all cores; each trainer runs in a fresh
     subprocess (HF's thread pool is fixed at start-up), alternating A and B, best of rounds;
  2. compression: held-out bytes per token of both vocabularies;
  3. encoding throughput: our Tokenizer vs a raw tiktoken.Encoding built on the same ranks;
  4. tokenizing the whole 59 MB corpus into shards (curated JSONL in, .bin out) on all cores;
  5. for contrast, minbpe-style naive training (recount every pair after every merge).

    python bench/tokenizer.py [--rounds 2] [--vocab 16384] [--skip-corpus]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

from baselines import SHARED_DATA, shared_data

GUTENBERG = SHARED_DATA / "gutenberg"


def load_slices(train_chars: int, heldout_chars: int) -> tuple[list[str], list[str]]:
    text = ""
    for f in sorted(GUTENBERG.glob("*.txt")):
        text += f.read_text(encoding="utf-8", errors="replace")
        if len(text) > train_chars + heldout_chars:
            break
    docs = lambda s: [d for d in s.split("\n\n") if d.strip()]  # noqa: E731 (paragraphs as documents)
    return docs(text[:train_chars]), docs(text[train_chars : train_chars + heldout_chars])


def train_ours(docs: list[str], vocab: int, workers: int):
    from scratchlm.config import TokenizerSettings
    from scratchlm.tokenizer.train import train_tokenizer

    return train_tokenizer(
        docs,
        TokenizerSettings(vocab_size=vocab, special_tokens=["<|endoftext|>"], workers=workers),
        progress=False,
    )


def train_hf(docs: list[str], vocab: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from scratchlm.tokenizer.bpe import PATTERNS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERNS["gpt4"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def child(which: str, vocab: int, workers: int, out: str) -> None:
    """Runs in a subprocess: train once, report the time, save the tokenizer."""
    docs, _ = load_slices(10_000_000, 2_000_000)
    start = time.perf_counter()
    tok = train_ours(docs, vocab, workers) if which == "ours" else train_hf(docs, vocab)
    seconds = time.perf_counter() - start
    tok.save(out)  # both libraries name it save()
    print(json.dumps({"seconds": seconds}))


def timed_child(which: str, vocab: int, cores: int, out: str) -> float:
    env = {**os.environ, "RAYON_NUM_THREADS": str(cores), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--vocab",
        str(vocab),
        "--workers",
        str(cores),
        "--out",
        out,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def naive_train(docs: list[str], num_merges: int) -> float:
    """minbpe's RegexTokenizer.train: recount all pairs of all chunks after every merge."""
    from scratchlm.tokenizer.bpe import PATTERNS, compile_pattern

    split = compile_pattern(PATTERNS["gpt4"])
    chunks = [list(w.encode()) for d in docs for w in split.findall(d)]
    start = time.perf_counter()
    for i in range(num_merges):
        stats: Counter = Counter()
        for ids in chunks:
            stats.update(pairwise(ids))
        pair = max(stats, key=stats.get)
        new = 256 + i
        for k, ids in enumerate(chunks):
            out, j = [], 0
            while j < len(ids):
                if j + 1 < len(ids) and ids[j] == pair[0] and ids[j + 1] == pair[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            chunks[k] = out
    return time.perf_counter() - start


def encode_throughput(ours, heldout: list[str], threads: int, rounds: int) -> dict[str, float]:
    import tiktoken

    raw = tiktoken.Encoding(
        name="raw",
        pat_str=ours.pattern,
        mergeable_ranks=ours.ranks,
        special_tokens=ours.special_tokens,
    )
    nbytes = sum(len(d.encode()) for d in heldout)
    best = {"scratchlm": float("inf"), "raw_tiktoken": float("inf")}
    for _ in range(rounds):
        t = time.perf_counter()
        ours.encode_batch(heldout, threads)
        best["scratchlm"] = min(best["scratchlm"], time.perf_counter() - t)
        t = time.perf_counter()
        raw.encode_ordinary_batch(heldout, num_threads=threads)
        best["raw_tiktoken"] = min(best["raw_tiktoken"], time.perf_counter() - t)
    return {k: round(nbytes / v / 1e6, 2) for k, v in best.items()}


def whole_corpus(threads: int) -> dict[str, float]:
    """Curate the 59 MB corpus (not timed), then time `tokenize` into shards."""
    from scratchlm.config import CurateSettings, TokenizeSettings
    from scratchlm.data.curate import curate, iter_curated_texts
    from scratchlm.tokenizer.shards import tokenize_corpus

    with tempfile.TemporaryDirectory() as tmp:
        cur = Path(tmp) / "curated"
        report = curate(CurateSettings(sources=[str(GUTENBERG)], min_words=0), cur, progress=False)
        tok = train_ours(load_slices(2_000_000, 0)[0], 16384, threads)
        out = Path(tmp) / "tokens"
        out.mkdir()
        start = time.perf_counter()
        meta = tokenize_corpus(
            iter_curated_texts(cur), tok, TokenizeSettings(threads=threads), out, progress=False
        )
        seconds = time.perf_counter() - start
    return {
        "megabytes": round(report["chars_out"] / 1e6, 1),
        "tokens": sum(meta["tokens"].values()),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--skip-corpus", action="store_true")
    ap.add_argument("--child", choices=["ours", "hf"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.vocab, args.workers, args.out)
        return
    shared_data("tokenizer", "gutenberg")
    cores = os.cpu_count() or 1
    result: dict = {
        "bench": "tokenizer",
        "vocab_size": args.vocab,
        "cpu_count": cores,
        "train_slice_mb": 10,
    }
    with tempfile.TemporaryDirectory() as tmp:
        ours_path, hf_path = f"{tmp}/ours.json", f"{tmp}/hf.json"
        for label, n in (("one_process", 1), ("all_cores", cores)):
            times: dict[str, list[float]] = {"scratchlm": [], "hf_tokenizers": []}
            for _ in range(args.rounds):  # alternate A and B so load affects both alike
                times["scratchlm"].append(timed_child("ours", args.vocab, n, ours_path))
                times["hf_tokenizers"].append(timed_child("hf", args.vocab, n, hf_path))
            best = {k: round(min(v), 2) for k, v in times.items()}
            result[f"train_seconds_{label}"] = best | {
                "ratio_ours_over_hf": round(best["scratchlm"] / best["hf_tokenizers"], 2)
            }

        from tokenizers import Tokenizer as HFTokenizer

        from scratchlm.tokenizer.tokenizer import load_tokenizer

        ours = load_tokenizer(ours_path)
        hf = HFTokenizer.from_file(hf_path)
    _, heldout = load_slices(10_000_000, 2_000_000)
    nbytes = sum(len(d.encode()) for d in heldout)
    ours_tokens = sum(len(ids) for ids in ours.encode_batch(heldout))
    hf_tokens = sum(len(e.ids) for e in hf.encode_batch(heldout, add_special_tokens=False))
    result["heldout_bytes_per_token"] = {
        "scratchlm": round(nbytes / ours_tokens, 4),
        "hf_tokenizers": round(nbytes / hf_tokens, 4),
        "ours_over_hf": round(hf_tokens / ours_tokens, 4),
    }
    for threads in (1, cores):
        mb = encode_throughput(ours, heldout, threads, rounds=3)
        result[f"encode_mb_per_s_{threads}_threads"] = mb | {
            "ratio": round(mb["scratchlm"] / mb["raw_tiktoken"], 3)
        }
    docs_1mb, _ = load_slices(1_000_000, 0)
    merges = 200
    start = time.perf_counter()
    train_ours(docs_1mb, 257 + merges, 1)
    ours_seconds = time.perf_counter() - start
    result["naive_contrast_1mb"] = {
        "merges": merges,
        "minbpe_naive_seconds": round(naive_train(docs_1mb, merges), 2),
        "scratchlm_seconds": round(ours_seconds, 2),
    }
    if not args.skip_corpus:
        result["tokenize_whole_corpus"] = whole_corpus(cores)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
