"""The per-document steps of curation, applied to a chunk of documents at a time.

`DocumentSteps(settings)` is built once per worker process (it loads the fastText models
there) and called on chunks of documents; it returns what survived and an account of what
happened at each step. It holds no state between chunks, so chunks can run anywhere (a process
pool, a Ray actor) and the result depends only on the chunk: the same output whatever the
number of workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.data import filters
from scratchlm.data.clean import normalize, strip_gutenberg
from scratchlm.data.fasttext_models import LanguageID, QualityModel
from scratchlm.data.pii import mask_pii
from scratchlm.data.settings import DOCUMENT_STEPS, CurateSettings
from scratchlm.data.sources import Document
from scratchlm.errors import StageError

EXCERPT = 160  # characters of a dropped document kept as an example in the report
BADWORDS_DIR = Path(__file__).parent / "badwords"


@dataclass
class ChunkResult:
    seen: int = 0  # documents that came in
    kept: list[Document] = field(default_factory=list)
    # step -> [documents in, documents out, characters in, characters out]
    funnel: dict[str, list[int]] = field(default_factory=dict)
    drops: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)  # PII masked, lines removed, ...
    languages: Counter = field(default_factory=Counter)

    def drop(self, reason: str, doc: Document, **extra: str) -> None:
        self.drops[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 2:
            examples.append({"id": doc.id, "text": doc.text[:EXCERPT], **extra})

    def merge(self, other: ChunkResult) -> None:
        """Add a later chunk's account to this one (examples: the first two overall)."""
        self.seen += other.seen
        for step, values in other.funnel.items():
            mine = self.funnel.setdefault(step, [0, 0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += v
        self.drops.update(other.drops)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[: 2 - len(mine)])
        self.counts.update(other.counts)
        self.languages.update(other.languages)


def load_badwords(s: CurateSettings) -> tuple[frozenset[str], tuple[str, ...]]:
    """(single words, phrases) of the configured language's list."""
    folder = Path(s.badwords_dir) if s.badwords_dir else BADWORDS_DIR
    path = folder / f"{s.badwords_language}.txt"
    if not path.is_file():
        raise StageError(f"curate.badwords_language={s.badwords_language}: no list at {path}")
    entries = [
        line.strip().lower()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return frozenset(e for e in entries if " " not in e), tuple(e for e in entries if " " in e)


class DocumentSteps:
    def __init__(self, s: CurateSettings):
        self.s = s
        self.steps = [step for step in s.steps if step in DOCUMENT_STEPS]
        self.langid = self.quality = None
        self.badwords: tuple[frozenset[str], tuple[str, ...]] = (frozenset(), ())
        if "language" in self.steps:
            self.langid = LanguageID()
        if "quality" in self.steps:
            self.quality = QualityModel(s.quality_model)
        if "badwords" in self.steps:
            self.badwords = load_badwords(s)
        self._words: tuple[str | None, list[str]] = (None, [])

    def words(self, text: str) -> list[str]:
        """The text's words, split once for all the steps that read them (until one changes it)."""
        if self._words[0] is not text:
            self._words = (text, filters.words_of(text))
        return self._words[1]

    def __call__(self, docs: list[Document]) -> ChunkResult:
        result = ChunkResult(seen=len(docs))
        for step in self.steps:
            result.funnel[step] = [0, 0, 0, 0]
        for doc in docs:
            survivor = self.one(doc, result)
            if survivor is not None:
                result.kept.append(survivor)
        return result

    def one(self, doc: Document, result: ChunkResult) -> Document | None:
        text, meta = doc.text, dict(doc.meta)
        if not text.strip():
            result.drop("empty", doc)
            return None
        for step in self.steps:
            funnel = result.funnel[step]
            funnel[0] += 1
            funnel[2] += len(text)
            text, reason = self.apply(step, text, meta, result)
            if reason is not None:
                result.drop(reason, Document(doc.id, text, meta))
                return None
            funnel[1] += 1
            funnel[3] += len(text)
        return Document(doc.id, text, meta)

    def apply(
        self, step: str, text: str, meta: dict[str, Any], result: ChunkResult
    ) -> tuple[str, str | None]:
        """One step on one text: (the text, possibly changed; a drop reason or None)."""
        s = self.s
        if step == "normalize":
            text = normalize(text, s.fix_mojibake)
            return text, None if text else "empty"
        if step == "gutenberg":
            text, found = strip_gutenberg(text)
            result.counts["gutenberg_boilerplate_removed"] += found
            return text, None if text else "empty"
        if step == "length":
            return text, filters.length(text, s)
        if step == "gopher":
            return text, filters.gopher(text, s, self.words(text))
        if step == "repetition":
            return text, filters.repetition(text, s, self.words(text))
        if step == "c4":
            before = text.count("\n") + 1
            text, reason = filters.c4(text, s)
            if reason is None:
                result.counts["c4_lines_removed"] += before - (text.count("\n") + 1)
            return text, reason
        if step == "fineweb":
            return text, filters.fineweb(text, s, self.words(text))
        if step == "badwords":
            return text, filters.badwords(text, *self.badwords)
        if step == "language":
            lang, score = self.langid.predict(text)
            result.languages[lang] += 1
            meta["language"], meta["language_score"] = lang, round(score, 4)
            if lang not in s.languages:
                return text, "language_not_wanted"
            if score < s.language_threshold:
                return text, "language_score_too_low"
            return text, None
        if step == "quality":
            score = self.quality.score(text)
            meta["quality"] = round(score, 5)
            # with a top fraction the cut is corpus-wide: made after every document is scored
            if not s.quality_top_fraction and score < s.quality_threshold:
                return text, "quality_too_low"
            return text, None
        if step == "pii":
            return mask_pii(text, s.pii, result.counts), None
        raise ValueError(f"unknown step {step}")
