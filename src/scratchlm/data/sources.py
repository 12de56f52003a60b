"""Reading documents from files, folders, globs, web crawls, HF datasets and built-in corpora.

A `Document` is the unit every later stage sees: an id that leads back to the input
(`<file>#<position>`: a line number, a row, a WARC record), the text, and where it came from.
Bad input (a malformed JSON line, a binary or unreadable file, a line without the text field,
a truncated file) is counted in `bad` with where it is (`file:line`) and skipped; a source that
does not exist at all is an error. Finding and opening the files is inputs.py's. Everything
streams: memory holds one record (or one Parquet batch) at a time, whatever the input size.

    .txt .md .rst          one document per file
    .jsonl[.gz|.zst]       one document per line, text in `text_field`
    .parquet               one document per row, text in the `text_field` column
    .html .htm             the page's main text (resiliparse), one document per file
    .warc[.gz] .wet[.gz]   web crawls (fastwarc): WARC responses' main text, WET records' text
    hf:<folder or name>    Hugging Face datasets: a dataset saved to disk, or a hub name
                           (hf:name or hf:name:split, streamed; needs the network)
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

from scratchlm.data.arithmetic import corpus_lines
from scratchlm.data.inputs import (
    BUILTIN,
    HTML_SUFFIXES,
    WARC_SUFFIXES,
    BadInput,
    fingerprint_sources,
    is_jsonl,
    open_binary,
    reading_error,
    resolve_sources,
    shakespeare_files,
)
from scratchlm.errors import StageError

ARITHMETIC_DOCS, ARITHMETIC_LINES = 500, 200  # builtin:arithmetic: 100,000 lines in all
__all__ = [  # kept importable from here
    "BUILTIN", "BadInput", "fingerprint_sources", "open_binary", "resolve_sources",
    "shakespeare_files",
]  # fmt: skip


@dataclass
class Document:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "text": self.text, "meta": self.meta}, ensure_ascii=False)


def _pydoc_documents() -> Iterator[Document]:
    # position: a number, as for every other source (a column of one type, for Arrow readers)
    for i, name in enumerate(sorted(topics), start=1):
        yield Document(
            f"pydoc_data/topics.py#{name}",
            topics[name],
            {"source": "builtin:pydoc", "position": i},
        )


def _arithmetic_documents() -> Iterator[Document]:
    """Equations and questions with their answers ("12+37=49", "What is 12+37? 12+37=49"), from the
    training split of data/arithmetic.py: the held-out problems never appear."""
    lines = list(corpus_lines(ARITHMETIC_DOCS * ARITHMETIC_LINES))
    random.Random(0).shuffle(lines)
    for d in range(0, len(lines), ARITHMETIC_LINES):
        text = "\n".join(lines[d : d + ARITHMETIC_LINES])
        yield Document(
            f"builtin:arithmetic#{d // ARITHMETIC_LINES}", text, {"source": "builtin:arithmetic"}
        )


def _read_bytes(path: Path, bad: BadInput) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as e:  # no permission, an I/O error, a folder where a file was
        bad.add("unreadable_file", f"{path} ({e.strerror or e})")
        return None


def _read_text_file(path: Path, bad: BadInput) -> Iterator[Document]:
    data = _read_bytes(path, bad)
    if data is None:
        return
    if b"\x00" in data[:8192]:
        bad.add("binary_file", str(path))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # One bad byte should not cost a whole book: keep it with U+FFFD and count it.
        bad.add("invalid_utf8_repaired", f"{path}:byte {e.start}")
        text = data.decode("utf-8", errors="replace")
    yield Document(f"{_label(path)}#0", text, {"source": str(path), "position": 0})


def _label(path: Path) -> str:
    """A document id's file part: the path as given (unique), or the name for built-ins."""
    return path.name if "site-packages" in path.parts else str(path)


def _read_jsonl(path: Path, text_field: str, bad: BadInput) -> Iterator[Document]:
    import zstandard

    try:
        f = open_binary(path)
    except OSError as e:
        bad.add("unreadable_file", f"{path} ({e.strerror or e})")
        return
    lineno = 0
    try:
        with f:
            for lineno, raw in enumerate(f, start=1):
                doc = _jsonl_record(raw, path, lineno, text_field, bad)
                if doc is not None:
                    yield doc
    except (EOFError, OSError, zlib.error, zstandard.ZstdError) as e:  # cut short, corrupt,
        # or unreadable midway: what was read before is kept
        bad.add(reading_error(e), f"{path}:{lineno + 1}")


def _read_parquet(path: Path, text_field: str, bad: BadInput) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        unreadable = isinstance(e, OSError) and e.errno
        bad.add("unreadable_file" if unreadable else "corrupt_file", str(path))
        return
    total = f.metadata.num_rows
    if text_field not in f.schema_arrow.names:
        bad.add("missing_text_field", f"{path} (no column {text_field!r})", total)
        return
    columns = [text_field] + (["id"] if "id" in f.schema_arrow.names else [])
    row = 0
    try:
        for batch in f.iter_batches(batch_size=1024, columns=columns):
            ids = batch.column("id").to_pylist() if "id" in columns else None
            for i, text in enumerate(batch.column(text_field).to_pylist()):
                row += 1
                if not isinstance(text, str):
                    bad.add("missing_text_field", f"{path}:row {row}")
                    continue
                doc_id = str(ids[i]) if ids and ids[i] is not None else f"{_label(path)}#{row}"
                yield Document(doc_id, text, {"source": str(path), "position": row})
    except Exception:  # a damaged page or row group: the rows before it are kept
        bad.add("corrupt_file", f"{path}:row {row + 1}")
        if total > row:  # the footer says how many rows there were: the rest are counted
            bad.add("unread_records", f"{path}:rows {row + 1}-{total}", total - row)


def html_to_text(html: bytes | str) -> str:
    """The main text of a web page: navigation, footers and scripts left out (resiliparse)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    if isinstance(html, bytes):
        html = bytes_to_str(html, detect_encoding(html))
    return extract_plain_text(html, main_content=True)


def _read_html(path: Path, bad: BadInput) -> Iterator[Document]:
    data = _read_bytes(path, bad)
    if data is None:
        return
    if b"\x00" in data[:8192]:
        bad.add("binary_file", str(path))
        return
    yield Document(f"{_label(path)}#0", html_to_text(data), {"source": str(path), "position": 0})


def _read_warc(path: Path, bad: BadInput) -> Iterator[Document]:
    """WARC response records (HTML: main text extracted) and WET conversion records (text)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    kinds = WarcRecordType.response | WarcRecordType.conversion
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except OSError as e:
        bad.add("unreadable_file", f"{path} ({e.strerror or e})")
        return
    n = 0
    try:
        with f:
            for n, record in enumerate(ArchiveIterator(f, record_types=kinds), start=1):
                url = record.headers.get("WARC-Target-URI", "")
                body = record.reader.read()
                if record.record_type == WarcRecordType.response:
                    if "html" not in (record.http_content_type or "html"):
                        bad.add("warc_not_html", f"{path}:record {n}")
                        continue
                    text = html_to_text(body)
                else:
                    text = body.decode("utf-8", errors="replace")
                doc_id = record.headers.get("WARC-Record-ID", f"{_label(path)}#{n}")
                yield Document(doc_id, text, {"source": str(path), "position": n, "url": url})
    except (EOFError, OSError, zlib.error) as e:
        bad.add(reading_error(e), f"{path}:record {n + 1}")


def _read_hf(spec: str, text_field: str, bad: BadInput) -> Iterator[Document]:
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
            where = f"{target}:{split}" if split else target
            if not isinstance(text, str):
                bad.add("missing_text_field", f"{where}#{i}")
                continue
            doc_id = str(record.get("id", f"{where}#{i}"))
            yield Document(doc_id, text, {"source": spec, "split": split, "position": i})


def _jsonl_record(
    raw: bytes, path: Path, lineno: int, text_field: str, bad: BadInput
) -> Document | None:
    """One JSONL line as a document, or None when it is bad (counted in `bad` with its line)."""
    where = f"{path}:{lineno}"
    if not raw.strip():
        bad.add("blank_line", where)
        return None
    try:
        record = json.loads(raw)
        text = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(text, str):
            doc_id = str(record.get("id", f"{_label(path)}#{lineno}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        bad.add("malformed_json_line", where)
        return None
    except RecursionError:  # nested deeper than the parser (or str) can follow
        bad.add("json_nested_too_deep", where)
        return None
    if not isinstance(text, str):
        bad.add("missing_text_field", where)
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can carry lone surrogates, which are not text
        bad.add("invalid_unicode", where)
        return None
    return Document(doc_id, text, {"source": str(path), "position": lineno})


def iter_documents(
    sources: list[str], text_field: str = "text", bad: BadInput | None = None
) -> Iterator[Document]:
    """Stream the documents of every source in order. Bad input is counted in `bad`, with
    where it is; a bad file never stops the others."""
    bad = bad if bad is not None else BadInput()
    for item in resolve_sources(sources, bad):
        if item == "builtin:pydoc":
            yield from _pydoc_documents()
        elif item == "builtin:arithmetic":
            yield from _arithmetic_documents()
        elif isinstance(item, str) and item.startswith("hf:"):
            yield from _read_hf(item, text_field, bad)
        elif isinstance(item, Path) and is_jsonl(item):
            yield from _read_jsonl(item, text_field, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(".parquet"):
            yield from _read_parquet(item, text_field, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(HTML_SUFFIXES):
            yield from _read_html(item, bad)
        elif isinstance(item, Path) and item.name.lower().endswith(WARC_SUFFIXES):
            yield from _read_warc(item, bad)
        elif isinstance(item, Path):
            yield from _read_text_file(item, bad)
