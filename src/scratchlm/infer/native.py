"""A C kernel for the serving engine's decode attention, compiled on first use.

    rows = DecodeRows(slots, lengths)       # once a step: each row's slot and context
    out = decode_attention(q, k, v, rows)   # each layer; None where it cannot run: use SDPA

`decode_attention.c` beside this file is built with the machine's C compiler (`$CC`, else
`cc`) into the user's cache folder (`$SCRATCHLM_CACHE`, else `$XDG_CACHE_HOME/scratchlm`,
else `~/.cache/scratchlm`), once per source, compiler and CPU, and loaded with ctypes: no
Python headers, no torch build, a fraction of a second. Without a compiler, or with
`SCRATCHLM_KERNELS=0`, nothing is built and the engine uses PyTorch's
scaled_dot_product_attention, with the same results up to float rounding.

Why C at all: a decode step attends one query per row. SDPA runs that as a small matrix
product per (row, head) over keys padded to the longest row; at 32 rows of ~100 tokens of a
GPT-2 124M model that is a fifth of the step. The kernel reads each row's keys and values
once, up to its own length (`python bench/decode_attention.py`; docs/LOG.md).

ctypes lets go of the GIL during the call, so with several torch threads the rows are split
across that many threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from scratchlm.io import atomic_path

SOURCE = Path(__file__).with_name("decode_attention.c")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
log = logging.getLogger(__name__)

_lib: ctypes.CDLL | None = None
_tried = False
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, the pool)


def cache_dir() -> Path:
    if os.environ.get("SCRATCHLM_CACHE"):
        return Path(os.environ["SCRATCHLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scratchlm"


def _cpu_id() -> str:
    """What -march=native compiled for: a library built on another CPU may not run here."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({x for x in lines if x.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: decode attention uses PyTorch's SDPA")
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join([compiler, *FLAGS]).encode(), _cpu_id().encode()]))  # fmt: skip
    library = cache_dir() / "kernels" / f"decode_attention-{key.hexdigest()[:16]}.so"
    if not library.is_file():
        try:
            with atomic_path(library) as tmp:
                cmd = [compiler, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            stderr = getattr(e, "stderr", b"") or b""
            log.warning("building %s failed (%s); decode attention uses PyTorch's SDPA\n%s",
                        SOURCE.name, e, stderr.decode(errors="replace")[-2000:])  # fmt: skip
            return None
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:  # e.g. a cache folder mounted noexec
        log.warning("loading %s failed (%s); decode attention uses PyTorch's SDPA", library, e)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.decode_attention.argtypes = [p, i64, i64, p, p, p, p, p, i64, i64, i64, i64, i64, ctypes.c_float]  # fmt: skip
    lib.decode_attention.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernel is built and loaded (building it on the first call)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        if os.environ.get("SCRATCHLM_KERNELS", "1") != "0":
            _lib = _build()
    return _lib is not None


class DecodeRows:
    """The one-token rows of a step: each one's cache slot and how many positions it sees
    (its new token included). Checked once a step, read by every layer."""

    def __init__(self, slots: list[int], lengths: list[int]):
        if not slots or len(slots) != len(lengths) or min(slots) < 0 or min(lengths) < 1:
            raise ValueError(f"decode rows need slots >= 0 and lengths >= 1: {slots}, {lengths}")
        self.count, self.top_slot, self.longest = len(slots), max(slots), max(lengths)
        self.slots = torch.tensor(slots, dtype=torch.int64)
        self.lengths = torch.tensor(lengths, dtype=torch.int64)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: DecodeRows
) -> torch.Tensor | None:
    """softmax(q k^T / sqrt(d)) v for one query per row, (rows, heads, d); None where the
    kernel cannot run (not built, not float32 on the CPU): the caller uses SDPA then.

    q (rows, heads, d), any strides with d contiguous; k, v (slots, capacity, kv_heads, d),
    one layer of the cache, contiguous."""
    if not available() or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (q, k, v)):  # fmt: skip
        return None
    if q.size(0) != rows.count or rows.top_slot >= k.size(0) or rows.longest > k.size(1):
        raise ValueError("decode_attention: a row's slot or length is outside the cache")
    if q.size(1) % k.size(2) or q.size(2) != k.size(3) or k.shape != v.shape:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not fit k, v {tuple(k.shape)}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    k, v = k.contiguous(), v.contiguous()  # the cache's layers already are: no copy
    n, heads, d = q.shape
    out = q.new_empty(n, heads, d)
    scale = 1.0 / math.sqrt(d)

    def run(a: int, b: int) -> int:
        return _lib.decode_attention(
            q[a].data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(),
            out[a].data_ptr(), rows.slots[a].data_ptr(), rows.lengths[a].data_ptr(), b - a,
            heads, k.size(2), d, k.size(1), scale,
        )  # fmt: skip

    threads = min(torch.get_num_threads(), n)
    if threads <= 1:
        failed = run(0, n) != 0
    else:  # ctypes drops the GIL: the rows' shares run at once
        global _pool
        if _pool is None or _pool[0] < threads:
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="scratchlm-attention"))
        cuts = [n * i // threads for i in range(threads + 1)]
        failed = any(list(_pool[1].map(run, cuts[:-1], cuts[1:])))
    return None if failed else out
