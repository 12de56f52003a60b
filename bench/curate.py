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
     with 2 worker processes vs 1;
  4. decontamination: the decontaminate step's n-gram index (13 words) over Gutenberg and
     WikiText documents of ~500 words, 2% of them holding a planted benchmark item (some
     upper-cased, re-punctuated), against every sentence of WikiText-2's test split as an item:
     docs/s of ours, of a plain Python set of word tuples, and of datatrove 0.10.1's
     NGramsDecontFilter (run in its own venv, bench/datatrove_decontaminate.py), alternating;
     the planted documents each one finds, and where they disagree.

    pip install datatrove==0.10.1 spacy   # the baseline (not a scratchlm dependency)
    python3 -m venv /work/venvs/datatrove && /work/venvs/datatrove/bin/pip install datatrove==0.10.1 spacy xxhash==3.5.0 regex
    python bench/curate.py [--rounds 2] [--docs 3000] [--dedup-docs 10000] [--scaling-docs 10000]
                           [--decont-docs 5000] [--only filters,near_dedup,scaling,decontamination]
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


# --------------------------------------------------------------------------- 4. decontamination

DATATROVE_PYTHON = os.environ.get("DATATROVE_PYTHON", "/work/venvs/datatrove/bin/python")
DATATROVE_INSTALL = (
    "python3 -m venv /work/venvs/datatrove && /work/venvs/datatrove/bin/pip install "
    "datatrove==0.10.1 spacy xxhash==3.5.0 regex  (or set DATATROVE_PYTHON to a Python that has them)"
)


def decont_items() -> list[tuple[str, str]]:
    """(query, gold ending) pairs, HellaSwag-like, from every long sentence of WikiText-2 test."""
    text = (SHARED / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    items = []
    for line in text.splitlines():
        for sentence in line.split(" . "):
            words = sentence.split()
            if len(words) >= 20 and not sentence.lstrip().startswith("="):
                cut = len(words) * 2 // 3
                items.append((" ".join(words[:cut]), " ".join(words[cut:]) + " ."))
    return items


def decont_corpus(
    n: int, items: list[tuple[str, str]], seed: int = 3
) -> tuple[list[str], set[int]]:
    """~500-word documents (Gutenberg windows and WikiText-2 valid articles); 2% hold an item,
    some upper-cased or with extra punctuation. Returns the documents and the planted ones."""
    from scratchlm.data.clean import strip_gutenberg

    rng = random.Random(seed)
    docs = [a for a in wikitext_articles() if len(a.split()) > 100][: n // 5]
    for book in sorted((SHARED / "gutenberg").glob("*.txt")):
        words = strip_gutenberg(book.read_text(encoding="utf-8", errors="replace"))[0].split()
        docs += [" ".join(words[i : i + 500]) for i in range(0, len(words) - 499, 1000)]
        if len(docs) >= n:
            break
    docs = docs[:n]
    rng.shuffle(docs)
    planted = set(rng.sample(range(len(docs)), len(docs) // 50))
    for i in planted:
        query, gold = rng.choice(items)
        text = f"{query} {gold}"
        text = rng.choice([text, text.upper(), text.replace(" ", ", ", 3), text.replace(" ,", ";")])
        words = docs[i].split(" ")
        at = rng.randrange(len(words))
        docs[i] = " ".join(words[:at] + [text] + words[at:])
    return docs, planted


def set_of_tuples(items: list[tuple[str, str]], docs: list[str], n: int) -> tuple[set[int], float]:
    """The plain way: a Python set of word n-gram tuples; a document is contaminated when any
    of its n-grams is in the set. Returns the flagged documents and the seconds of the scan."""
    import re

    punct = re.compile(r"[^\w\s]")

    def words(text: str) -> list[str]:
        return punct.sub("", text.lower()).split()

    index = set()
    for query, gold in items:
        w = words(f"{query} {gold}")
        index.update(zip(*(w[k:] for k in range(n)), strict=False))
    start = time.perf_counter()
    flagged = set()
    for i, text in enumerate(docs):
        w = words(text)
        if any(g in index for g in zip(*(w[k:] for k in range(n)), strict=False)):
            flagged.add(i)
    return flagged, time.perf_counter() - start


def ngram_index(items: list[tuple[str, str]], docs: list[str], n: int) -> tuple[dict, float, int]:
    """Ours, the decontaminate step's core: NGramIndex.scan on chunks of 64 documents.
    Returns {flagged document: the first shared n-gram}, the seconds of the scan, the n-grams."""
    from scratchlm.data.benchmarks import Benchmark
    from scratchlm.data.ngrams import NGramIndex

    index = NGramIndex([Benchmark("items", [f"{q} {g}" for q, g in items])], n)
    start = time.perf_counter()
    flagged = {}
    for c in range(0, len(docs), 64):
        for i, matches in enumerate(index.scan(docs[c : c + 64]), start=c):
            if matches:
                flagged[i] = index.ngram_text(matches[0].at)
    return flagged, time.perf_counter() - start, index.ngrams


def run_datatrove(items: list[tuple[str, str]], docs: list[str], n: int, tmp: Path) -> dict:
    import subprocess

    (tmp / "in.json").write_text(json.dumps({"n": n, "items": items, "docs": docs}))
    script = Path(__file__).with_name("datatrove_decontaminate.py")
    subprocess.run([DATATROVE_PYTHON, str(script), str(tmp / "in.json"), str(tmp / "out.json")], check=True)  # fmt: skip
    return json.loads((tmp / "out.json").read_text())


def decontamination(n_docs: int, rounds: int, n: int = 13) -> dict:
    items = decont_items()
    docs, planted = decont_corpus(n_docs, items)
    has_datatrove = Path(DATATROVE_PYTHON).is_file()
    start = time.perf_counter()
    ngram_index(items, docs[:1], n)
    build = time.perf_counter() - start
    best = {"ours": float("inf"), "set_of_tuples": float("inf"), "datatrove": float("inf")}
    found: dict[str, set[int]] = {}
    shared: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):  # alternate A, B, C
            shared["ours"], t, ngrams = ngram_index(items, docs, n)
            found["ours"] = set(shared["ours"])
            best["ours"] = min(best["ours"], t)
            found["set_of_tuples"], t = set_of_tuples(items, docs, n)
            best["set_of_tuples"] = min(best["set_of_tuples"], t)
            if has_datatrove:
                dt = run_datatrove(items, docs, n, Path(tmp))
                shared["datatrove"] = {int(i): g for i, g in dt["flagged"].items()}
                found["datatrove"] = set(shared["datatrove"])
                best["datatrove"] = min(best["datatrove"], dt["seconds"])
    words = sum(len(d.split()) for d in docs) / len(docs)
    result: dict = {
        "documents": len(docs),
        "words_per_document": round(words),
        "items": len(items),
        "index_ngrams": ngrams,
        "index_build_seconds": round(build, 2),
        "planted": len(planted),
        "docs_per_second": {
            k: round(len(docs) / v, 1) for k, v in best.items() if v < float("inf")
        },
        "speedup_vs_set_of_tuples": round(best["set_of_tuples"] / best["ours"], 2),
        "planted_found": {k: len(v & planted) for k, v in found.items()},
        "flagged_beyond_planted": {k: len(v - planted) for k, v in found.items()},
        "ours_beyond_planted": {i: shared["ours"][i] for i in sorted(found["ours"] - planted)[:5]},
    }
    if has_datatrove:
        result["speedup_vs_datatrove"] = round(best["datatrove"] / best["ours"], 2)
        ours_only = sorted(found["ours"] - found["datatrove"])
        theirs_only = sorted(found["datatrove"] - found["ours"])
        result["ours_only"] = {i: shared["ours"][i] for i in ours_only[:5]} | {"count": len(ours_only)}  # fmt: skip
        result["datatrove_only"] = {i: shared["datatrove"][i] for i in theirs_only[:5]} | {"count": len(theirs_only)}  # fmt: skip
        result["datatrove"] = {"hashes": dt["ngrams"], "index_build_seconds": round(dt["index_seconds"], 2)}  # fmt: skip
    else:
        result["datatrove"] = {"skipped": f"not installed: {DATATROVE_INSTALL}"}
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--dedup-docs", type=int, default=10000)
    p.add_argument("--scaling-docs", type=int, default=10000)
    p.add_argument("--decont-docs", type=int, default=5000)
    p.add_argument("--only", default="filters,near_dedup,scaling,decontamination")
    args = p.parse_args()
    shared_data("curate", "gutenberg", "wikitext-2")
    only = set(args.only.split(","))
    result: dict = {"cpu_cores": os.cpu_count(), "threads_per_process": 1, "load": os.getloadavg()}
    if "filters" in only:
        result["filters_vs_datatrove"] = (
            compare_filters(build_corpus(args.docs), args.rounds)
            if importlib.util.find_spec("datatrove") and importlib.util.find_spec("spacy")
            else {"skipped": "the baseline is missing: pip install datatrove==0.10.1 spacy"}
        )
    if "near_dedup" in only:
        result["near_dedup"] = dedup_bench(args.dedup_docs)
    if "scaling" in only:
        # big enough that starting the workers (spawn, imports, fastText loads: ~1 s) is amortised
        result["scaling"] = scaling(build_corpus(args.scaling_docs, seed=2), args.rounds)
    if "decontamination" in only:
        result["decontamination"] = decontamination(args.decont_docs, args.rounds)
    print(json.dumps(result, indent=1, default=dict))


if __name__ == "__main__":
    main()
