"""Benchmark decontamination: drop training documents that share a 13-word sequence with an
evaluation item, or cut the shared text out.

The method is GPT-3's (Brown et al. 2020, appendix C):

    1. words are lowercase, without punctuation (ngrams.py says exactly how)
    2. every n-gram (n = 13) of every benchmark item goes into an index (ngrams.NGramIndex)
    3. a document holding any of them is contaminated: it is dropped, or (remove_spans) each
       shared n-gram is cut out with `window` characters on either side, pieces shorter than
       `window` go, and a document cut into more than `max_pieces` pieces is dropped whole

An item shorter than n words has no n-gram, so it cannot be found: the report counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

from scratchlm.data.benchmarks import Benchmark, expand_specs, load_benchmark
from scratchlm.data.ngrams import Match, NGramIndex, word_spans
from scratchlm.data.settings import CurateSettings
from scratchlm.data.sources import Document
from scratchlm.errors import StageError

EXCERPT = 200  # characters of an item shown in the report


# --------------------------------------------------------------------------- cutting spans


def _whole_words(text: str, a: int, b: int) -> tuple[int, int]:
    """[a, b) clipped to the text and widened to whole words: a cut never leaves half a word."""
    a, b = max(a, 0), min(b, len(text))
    while a > 0 and not text[a - 1].isspace():
        a -= 1
    while b < len(text) and not text[b].isspace():
        b += 1
    return a, b


def remove_spans(
    text: str, matches: list[Match], n: int, window: int, max_pieces: int
) -> tuple[str, int]:
    """`text` without each matched n-gram and `window` characters around it; pieces shorter
    than `window` go too. Returns ("", pieces) when more than `max_pieces` pieces are left,
    as GPT-3 dropped such documents whole; else the pieces joined by a blank line."""
    spans = word_spans(text)
    cuts = sorted(
        _whole_words(text, spans[m.word][0] - window, spans[m.word + n - 1][1] + window)
        for m in matches
    )
    merged: list[list[int]] = []
    for a, b in cuts:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    pieces, last = [], 0
    for a, b in merged:
        pieces.append(text[last:a])
        last = b
    pieces.append(text[last:])
    kept = [p.strip() for p in pieces if len(p.strip()) >= window]
    if len(kept) > max_pieces:
        return "", len(kept)
    return "\n\n".join(kept), len(kept)


# --------------------------------------------------------------------------- the curate step


class Decontamination:
    """The `decontaminate` step of curation: the index over the benchmarks, and an account of
    what it found in each (documents and items touched, a few examples)."""

    EXAMPLES = 3

    def __init__(self, benchmarks: Sequence[Benchmark], n: int):
        self.index = NGramIndex(benchmarks, n)
        count = len(self.index.benchmarks)
        self.documents = [0] * count
        self.items: list[set[int]] = [set() for _ in range(count)]
        self.examples: list[list[dict[str, str]]] = [[] for _ in range(count)]
        self.outcome = {"dropped": 0, "cut": 0, "chars_removed": 0}

    @classmethod
    def of_files(cls, specs: Sequence[str], n: int) -> Decontamination:
        if not specs:
            raise StageError(
                "curate.steps has decontaminate but nothing to check against: set "
                "curate.decontaminate_against (or eval.tasks, for `scratchlm run` / `curate`)"
            )
        return cls([load_benchmark(spec) for spec in expand_specs(list(specs))], n)

    def settle(
        self, doc: Document, matches: list[Match], s: CurateSettings
    ) -> tuple[Document | None, str, dict[str, str]]:
        """What becomes of a document: itself when nothing matched; else (drop mode) nothing,
        or (remove_spans) the document cut, or nothing if too little or too much is left.
        Returns (the document or None, the drop reason, what the drop example says)."""
        if not matches:
            return doc, "", {}
        shared = self.record(doc.id, matches)
        if s.decontaminate_mode == "drop":
            self.outcome["dropped"] += 1
            return None, "contaminated", shared
        text, pieces = remove_spans(
            doc.text, matches, self.index.n, s.decontaminate_window, s.decontaminate_max_pieces
        )
        self.outcome["chars_removed"] += len(doc.text) - len(text)
        if not text:
            self.outcome["dropped"] += 1
            return None, "contaminated_" + ("too_many_pieces" if pieces else "nothing_left"), shared
        self.outcome["cut"] += 1
        return Document(doc.id, text, doc.meta), "", shared

    def record(self, doc_id: str, matches: list[Match]) -> dict[str, str]:
        """Count one contaminated document; return what its drop example should say."""
        first: dict[int, Match] = {}
        for m in matches:
            self.items[m.benchmark].add(m.item)
            first.setdefault(m.benchmark, m)
        for b, m in first.items():
            self.documents[b] += 1
            if len(self.examples[b]) < self.EXAMPLES:
                self.examples[b].append(self.example(doc_id, m))
        m = matches[0]
        return {
            "benchmark": self.index.benchmarks[m.benchmark].name,
            "ngram": self.index.ngram_text(m.at),
        }

    def example(self, doc_id: str, m: Match) -> dict[str, str]:
        bench = self.index.benchmarks[m.benchmark]
        return {
            "id": doc_id,
            "item": " ".join(bench.texts[m.item].split())[:EXCERPT],
            "item_position": str(bench.positions[m.item]),
            "ngram": self.index.ngram_text(m.at),
        }

    def report(self) -> dict[str, object]:
        return {
            "ngram": self.index.n,
            "index_ngrams": self.index.ngrams,
            **self.outcome,
            "benchmarks": {
                bench.name: {
                    "items": len(bench.texts),
                    "items_too_short": self.index.too_short[b],
                    "skipped_lines": len(bench.skipped),
                    "documents": self.documents[b],
                    "items_touched": len(self.items[b]),
                    "examples": self.examples[b],
                }
                for b, bench in enumerate(self.index.benchmarks)
            },
        }
