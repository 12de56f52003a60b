"""Curation benchmark: our heuristic filters against HF datatrove's, near-dedup, and scaling.

On a corpus built from ../shared/data (Gutenberg passages, WikiText-2 articles, and web-like
documents made to trip each rule: navigation lines, lists, code, spam, hashtags, lorem ipsum),
in one run, one core each unless said otherwise:
  1. filters: our gopher + c4 + repetition steps vs datatrove 0.10.1's GopherQualityFilter +
     C4QualityFilter + GopherRepetitionFilter (same order, same thresholds); docs/s, alternating
     rounds; the share of documents with the same keep/drop decision; every class of
     disagreement, counted, with an example;
  2. near dedup: `curate` with steps=[near_dedup] end to end (read, MinHash, LSH, write) on
     500-word documents with 5% injected near duplicates (1% of words changed): docs/s, the
     share of injected duplicates found, false merges;
  3. scaling: all the per-document steps (filters, language ID, PII) over 10,000 documents
     with 2 worker processes vs 1.

    pip install datatrove==0.10.1 spacy   # the baseline (not a scratchlm dependency)
    python bench/curate.py [--rounds 2] [--docs 3000] [--dedup-docs 10000] [--scaling-docs 10000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from baselines import SHARED_DATA, shared_data

from scratchlm.config import DOCUMENT_STEPS, CurateSettings

SHARED = SHARED_DATA


# --------------------------------------------------------------------------- the corpus


def gutenberg_passages(n: int, words: int, rng: random.Random) -> list[str]:
    from scratchlm.data.clean import strip_gutenberg

    out = []
    books = sorted((SHARED / "gutenberg").glob("*.txt"))
    for book in books:
        text = strip_gutenberg(book.read_text(encoding="utf-8", errors="replace"))[0]
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        i = rng.randrange(max(1, len(paragraphs) // 2))
        while i < len(paragraphs) and len(out) < n:
            chunk, count = [], 0
            while i < len(paragraphs) and count < words:
                chunk.append(paragraphs[i])
                count += len(paragraphs[i].split())
                i += 1
            out.append("\n\n".join(chunk))
            i += rng.randrange(5, 40)
            if len(out) % max(1, n // len(books)) == 0:
                break
    return out[:n]


def wikitext_articles() -> list[str]:
    text = (SHARED / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    articles, current = [], []
    for line in text.splitlines():
        if line.startswith(" = ") and not line.startswith(" = = "):
            if current:
                articles.append("\n".join(current).strip())
            current = []
        current.append(line.strip())
    return [a for a in articles + ["\n".join(current)] if a]


def web_like(n: int, rng: random.Random, sentences: list[str]) -> list[str]:
    """Documents a crawl is full of, each kind tripping some rule (or almost)."""
    kinds = []
    nav = ["Home", "About us", "Contact", "Privacy Policy", "Log in", "Sign up", "Cart (0)"]
    for i in range(n):
        body = " ".join(rng.sample(sentences, rng.randint(3, 12)))
        kind = i % 10
        if kind == 0:  # navigation around an article
            doc = "\n".join(rng.sample(nav, 4) + [body] + ["This site uses cookies.", "© 2024"])
        elif kind == 1:  # a list
            doc = "\n".join(f"- {s}" for s in rng.sample(sentences, 8))
        elif kind == 2:  # code
            doc = body + "\nfunction f(x) { return x + 1; }\nvar y = f(2);"
        elif kind == 3:  # spam
            doc = body + " " + " ".join(["best deals buy now"] * rng.randint(5, 40))
        elif kind == 4:  # hashtags
            doc = body + " " + " ".join(f"#tag{j}" for j in range(rng.randint(2, 30)))
        elif kind == 5:  # placeholder text
            doc = body + " Lorem ipsum dolor sit amet, consectetur adipiscing elit."
        elif kind == 6:  # a teaser page
            doc = "\n".join(s[:60] + "..." for s in rng.sample(sentences, 6))
        elif kind == 7:  # repeated boilerplate lines
            doc = "\n".join(
                [body] + ["Click here to subscribe to our newsletter."] * rng.randint(1, 6)
            )
        elif kind == 8:  # too short
            doc = " ".join(rng.sample(sentences, 1))
        else:  # a clean page
            doc = "\n".join(rng.sample(sentences, 12))
        kinds.append(doc)
    return kinds


def build_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    articles = wikitext_articles()
    passages = gutenberg_passages(n // 2, 400, rng)
    sentences = [
        s.strip() + "." for a in articles for s in a.split(" . ") if 8 < len(s.split()) < 40
    ]
    docs = (
        passages
        + articles[: n // 4]
        + web_like(n - len(passages) - min(len(articles), n // 4), rng, sentences)
    )
    rng.shuffle(docs)
    return docs[:n]


# --------------------------------------------------------------------------- 1. filters


def ours(docs: list[str], s: CurateSettings) -> list[str | None]:
    from scratchlm.data.sources import Document
    from scratchlm.data.steps import ChunkResult, DocumentSteps

    steps = DocumentSteps(CurateSettings(**{**s.__dict__, "steps": ["gopher", "c4", "repetition"]}))
    out = []
    for i, text in enumerate(docs):
        result = ChunkResult()
        result.funnel = {st: [0, 0, 0, 0] for st in steps.steps}
        kept = steps.one(Document(str(i), text), result)
        out.append(None if kept is not None else next(iter(result.drops)))
    return out


def datatrove(docs: list[str]) -> list[str | None]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    chain = [GopherQualityFilter(), C4QualityFilter(), GopherRepetitionFilter()]
    out = []
    for i, text in enumerate(docs):
        doc = Document(text=text, id=str(i))
        reason = None
        for f in chain:
            verdict = f.filter(doc)
            if verdict is not True:
                reason = verdict[1] if isinstance(verdict, tuple) else f.name
                break
        out.append(reason)
    return out


# datatrove's alphabetic-word ratio divides by all spaCy tokens, punctuation included, so it
# drops ordinary prose with many commas and quotes; ours divides by real words (filters.gopher)
QUIRK = "datatrove=gopher_below_alpha_threshold"


def compare_filters(docs: list[str], rounds: int) -> dict:
    s = CurateSettings()
    datatrove(docs[:20])  # load spaCy before timing
    times = {"ours": [], "datatrove": []}
    for _ in range(rounds):  # alternate A and B
        t = time.perf_counter()
        mine = ours(docs, s)
        times["ours"].append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = datatrove(docs)
        times["datatrove"].append(time.perf_counter() - t)
    same = sum((a is None) == (b is None) for a, b in zip(mine, theirs, strict=True))
    classes: Counter = Counter()
    examples: dict[str, str] = {}
    for text, a, b in zip(docs, mine, theirs, strict=True):
        if (a is None) != (b is None):
            key = f"ours={a or 'keep'} / datatrove={b or 'keep'}"
            classes[key] += 1
            examples.setdefault(key, " ".join(text.split())[:160])
    best = {k: min(v) for k, v in times.items()}
    quirk = classes_total = sum(n for k, n in classes.items() if k.endswith(QUIRK))
    classes_total = sum(classes.values())
    comparable = len(docs) - quirk
    return {
        "documents": len(docs),
        "kept": {"ours": mine.count(None), "datatrove": theirs.count(None)},
        "docs_per_second": {k: round(len(docs) / v, 1) for k, v in best.items()},
        "speedup": round(best["datatrove"] / best["ours"], 1),
        "same_decision": round(same / len(docs), 4),
        "same_decision_without_the_quirk": round(same / comparable, 4),
        "quirk_disagreements": quirk,
        "other_disagreements": classes_total - quirk,
        "disagreements": {
            k: {"count": n, "example": examples[k]} for k, n in classes.most_common()
        },
        "drop_reasons": {
            "ours": Counter(r for r in mine if r),
            "datatrove": Counter(r for r in theirs if r),
        },
    }


# --------------------------------------------------------------------------- 2. near dedup


def dedup_bench(n: int, seed: int = 1) -> dict:
    from scratchlm.data.clean import strip_gutenberg
    from scratchlm.data.curate import curate, iter_curated
    from scratchlm.data.dedup import MinHasher, jaccard, near_duplicate_clusters

    rng = random.Random(seed)
    originals: list[str] = []
    for book in sorted((SHARED / "gutenberg").glob("*.txt")):  # consecutive 500-word windows
        words = strip_gutenberg(book.read_text(encoding="utf-8", errors="replace"))[0].split()
        originals += [" ".join(words[i : i + 500]) for i in range(0, len(words) - 499, 500)]
        if len(originals) >= n:
            break
    originals = originals[:n]
    injected = []
    for i in rng.sample(range(len(originals)), len(originals) // 20):
        words = originals[i].split()
        for k in rng.sample(range(len(words)), len(words) // 100):  # 1% of the words
            words[k] = rng.choice(words)
        injected.append((i, " ".join(words)))
    docs = [(f"o{i}", t) for i, t in enumerate(originals)] + [(f"d{i}", t) for i, t in injected]
    rng.shuffle(docs)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs))
        s = CurateSettings(
            sources=[str(src)], steps=["near_dedup"], workers=1, output_format="jsonl"
        )
        t = time.perf_counter()
        report = curate(s, Path(tmp) / "out", progress=False)
        seconds = time.perf_counter() - t
        kept = {d["id"] for d in iter_curated(Path(tmp) / "out")}
    # The same clusters again (deterministic), to judge each merge by the true Jaccard
    # similarity of the two documents' shingle sets.
    hasher = MinHasher(s.minhash_permutations, s.minhash_ngram, s.seed)
    roots, _ = near_duplicate_clusters(
        [hasher.signature(t) for _, t in docs], s.minhash_bands, s.near_dedup_threshold
    )
    assert {docs[i][0] for i in range(len(docs)) if roots[i] == i} == kept
    position = {d: i for i, (d, _) in enumerate(docs)}
    found = sum(roots[position[f"o{i}"]] == roots[position[f"d{i}"]] for i, _ in injected)
    shingles = lambda i: set(hasher.shingles(docs[i][1]))  # noqa: E731
    merged = [i for i in range(len(docs)) if roots[i] != i]
    false = [i for i in merged if jaccard(shingles(i), shingles(roots[i])) < 0.5]
    return {
        "documents": len(docs),
        "words_per_document": 500,
        "injected_near_duplicates": len(injected),
        "docs_per_second": round(len(docs) / seconds, 1),
        "found": round(found / len(injected), 4),
        "removed": len(merged),
        "removed_beyond_the_injected": len(merged) - found,
        "false_merges": len(false),
        "false_merge_rate": round(len(false) / len(docs), 5),
        "clusters": report["near_duplicate_cluster_sizes"],
    }


# --------------------------------------------------------------------------- 3. scaling


def scaling(docs: list[str], rounds: int) -> dict:
    from scratchlm.data.curate import curate

    # every per-document step but the two that need a model or a file of the user's
    steps = [st for st in DOCUMENT_STEPS if st not in ("gutenberg", "quality")]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        best = {1: float("inf"), 2: float("inf")}
        for r in range(rounds):
            for workers in (1, 2):
                s = CurateSettings(sources=[str(src)], steps=steps, workers=workers, min_words=5)
                t = time.perf_counter()
                curate(s, Path(tmp) / f"out{workers}{r}", progress=False)
                best[workers] = min(best[workers], time.perf_counter() - t)
    return {
        "documents": len(docs),
        "docs_per_second": {f"{w}_workers": round(len(docs) / t, 1) for w, t in best.items()},
        "speedup_2_vs_1": round(best[1] / best[2], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--dedup-docs", type=int, default=10000)
    p.add_argument("--scaling-docs", type=int, default=10000)
    args = p.parse_args()
    shared_data("curate", "gutenberg", "wikitext-2")
    docs = build_corpus(args.docs)
    result = {
        "cpu_cores": os.cpu_count(),
        "threads_per_process": 1,
        "filters_vs_datatrove": (
            compare_filters(docs, args.rounds)
            if importlib.util.find_spec("datatrove") and importlib.util.find_spec("spacy")
            else {"skipped": "the baseline is missing: pip install datatrove==0.10.1 spacy"}
        ),
        "near_dedup": dedup_bench(args.dedup_docs),
        # big enough that starting the workers (spawn, imports, fastText loads: ~1 s) is amortised
        "scaling": scaling(build_corpus(args.scaling_docs, seed=2), args.rounds),
    }
    print(json.dumps(result, indent=1, default=dict))


if __name__ == "__main__":
    main()
