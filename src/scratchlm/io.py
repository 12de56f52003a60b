"""Atomic file writes and content digests.

Every file the tool leaves under its final name is complete: we write to a temporary
name in the same folder, fsync, then rename (atomic on POSIX). A crash at any moment
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _fsync_dir(path: Path) -> None:
    # The rename itself lives in the directory entry; fsync the folder so it survives power loss.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open `path` for writing; the file appears under its name only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that opens files itself (e.g. gguf's);
    the file appears under `path`, fsynced, only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; rename it to `path` when the block succeeds.

    An existing folder at `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, path: Path) -> None:
    """Make the complete folder `tmp` appear as `path`: its files fsynced, then one rename;
    an existing `path` is moved aside first and removed after, so one of them always exists."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """safetensors' save_file, the file's permissions then set from the umask as for any file
    we write (save_file creates its file readable by the owner alone, mode 0600)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def remove_dir(path: Path) -> None:
    """Delete a folder; it leaves its name first, so a kill midway leaves a hidden leftover
    (removed by `remove_leftovers`), never a half-deleted folder under its name."""
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


LEFTOVER = re.compile(r"\..+\.(tmp|old|deleting)(-(\d+))?")  # the temporary names used here


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files and folders that writes killed midway left in `folder`
    (.NAME.tmp-PID, .NAME.old-PID, .NAME.deleting-PID, .NAME.tmp), except those of a process
    that is still running; returns what was removed."""
    removed = []
    for path in sorted(folder.glob(".*")) if folder.is_dir() else []:
        m = LEFTOVER.fullmatch(path.name)
        if not m or (m.group(3) and _running(int(m.group(3)))):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from before: nothing of ours is mid-write now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_checksums(folder: str | os.PathLike, skip: Iterable[str] = ()) -> dict[str, str]:
    """{path relative to `folder`: sha256} of every file under it, except the paths in `skip`.
    Recorded when a folder is written, so a reader can tell that nothing in it changed."""
    folder, skip = Path(folder), set(skip)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        rel: file_sha256(p) for p in files if (rel := p.relative_to(folder).as_posix()) not in skip
    }


def checksum_problems(folder: str | os.PathLike, expected: dict[str, str]) -> list[str]:
    """What differs from the `expected` checksums under `folder`, one line per file (missing,
    or changed: truncated, damaged or replaced); [] when every file is as it was written."""
    problems = []
    for rel, digest in expected.items():
        path = Path(folder) / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{rel} has changed since it was written (checksum mismatch)")
    return problems


def json_sha256(obj: Any) -> str:
    """A stable hash of a JSON-able object (keys sorted), used for settings and manifests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
