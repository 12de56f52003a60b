"""The curation stage: read sources, normalise, drop what is too short or repeated, write shards.

Output folder:
    docs_00000.jsonl ...   one {"id", "text", "meta"} object per line
    report.json            documents and characters in/out, every drop reason with examples
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchlm.config import CurateSettings
from scratchlm.data.sources import Document, iter_documents
from scratchlm.errors import StageError
from scratchlm.io import atomic_open, atomic_write_json

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, one newline convention, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


class DropLog:
    """Counts every dropped document by reason and keeps two example ids per reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def drop(self, reason: str, doc: Document) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 2:
            examples.append(doc.id)

    def as_dict(self) -> dict[str, Any]:
        return {r: {"count": n, "examples": self.examples[r]} for r, n in self.counts.most_common()}


def _keep(docs: Iterator[Document], settings: CurateSettings, drops: DropLog) -> Iterator[Document]:
    seen: set[bytes] = set()
    for doc in docs:
        text = normalize(doc.text) if settings.normalize else doc.text
        if not text.strip():
            drops.drop("empty", doc)
            continue
        if len(text.split()) < settings.min_words:
            drops.drop("too_few_words", doc)
            continue
        if settings.dedup:
            digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if digest in seen:
                drops.drop("exact_duplicate", doc)
                continue
            seen.add(digest)
        yield Document(doc.id, text, doc.meta)


def curate(settings: CurateSettings, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run curation into `out_dir` (which must be empty or new); return the report."""
    start = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    bad: Counter[str] = Counter()
    drops = DropLog()
    stats = Counter()

    def counted(docs: Iterator[Document]) -> Iterator[Document]:
        for i, doc in enumerate(docs):
            if settings.max_docs and i >= settings.max_docs:
                return
            stats["documents_in"] += 1
            stats["chars_in"] += len(doc.text)
            yield doc

    docs = counted(iter_documents(settings.sources, settings.text_field, bad))
    kept = _keep(tqdm(docs, desc="curate", unit="doc", disable=not progress), settings, drops)
    shards = _write_shards(kept, out_dir, settings.shard_docs, stats)

    if stats["documents_out"] == 0:
        reasons = (
            ", ".join(f"{r}: {n}" for r, n in (drops.counts + bad).most_common())
            or "no input documents"
        )
        raise StageError(
            f"curate: no document survived out of {stats['documents_in']} ({reasons}); "
            "check curate.sources and curate.min_words"
        )
    report = {
        "documents_in": stats["documents_in"],
        "documents_out": stats["documents_out"],
        "chars_in": stats["chars_in"],
        "chars_out": stats["chars_out"],
        "dropped": drops.as_dict(),
        "bad_input": dict(bad.most_common()),
        "shards": shards,
        "seconds": round(time.time() - start, 2),
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


def _write_shards(
    docs: Iterator[Document], out_dir: Path, per_shard: int, stats: Counter
) -> list[str]:
    shards: list[str] = []
    batch: list[str] = []

    def flush() -> None:
        name = f"docs_{len(shards):05d}.jsonl"
        with atomic_open(out_dir / name, "w") as f:
            f.write("\n".join(batch) + "\n")
        shards.append(name)
        batch.clear()

    for doc in docs:
        batch.append(doc.to_json())
        stats["documents_out"] += 1
        stats["chars_out"] += len(doc.text)
        if len(batch) == per_shard:
            flush()
    if batch:
        flush()
    return shards


def iter_curated(curated_dir: Path) -> Iterator[dict[str, Any]]:
    """Stream the documents of a curated folder, in order."""
    shards = sorted(curated_dir.glob("docs_*.jsonl"))
    if not shards:
        raise StageError(
            f"{curated_dir} holds no docs_*.jsonl shards: run `scratchlm curate` first"
        )
    for shard in shards:
        with open(shard, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def iter_curated_texts(curated_dir: Path) -> Iterator[str]:
    for doc in iter_curated(curated_dir):
        yield doc["text"]
