"""Token shards: the `tokenize` stage writes them (a corpus encoded into flat token files, split
by document), and `TokenStream` reads them back for training and evaluation.

Output folder:
    train_000.bin, val_000.bin ...   token ids, uint16 when the vocab fits, else uint32;
                                     each document is followed by one <|endoftext|>
    meta.json                        vocab size, dtype, token counts, tokenizer fingerprint
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json
from scratchlm.tokenizer.settings import TokenizeSettings
from scratchlm.tokenizer.tokenizer import BPETokenizer, CharTokenizer, Tokenizer


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to <split>_000.bin, <split>_001.bin ... of at most `shard_tokens`."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = (
            out_dir,
            split,
            dtype,
            shard_tokens,
        )
        self.files: list[str] = []
        self.tokens = 0
        self._f = None
        self._in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._f is None or self._in_shard == self.shard_tokens:
                self._open_next()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            ids[:take].astype(self.dtype).tofile(self._f)
            self._in_shard += take
            self.tokens += take
            ids = ids[take:]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.files):03d}.bin"
        self.files.append(name)
        self._f = open(self.out_dir / name, "wb")  # noqa: SIM115 (held across write calls; closed in close())
        self._in_shard = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _is_val(doc_index: int, seed: int, fraction: float) -> bool:
    # A hash of (seed, position) rather than a shared RNG: the split of a document does not
    # depend on how documents are batched or how many threads encode them.
    h = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


def tokenize_corpus(
    texts: Iterable[str],
    tok: Tokenizer,
    settings: TokenizeSettings,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every text into train/val shards in `out_dir`; return the contents of meta.json."""
    start = time.time()
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(out_dir, s, dtype, settings.shard_tokens) for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    eot = np.array([tok.eot_id], dtype=np.int64)
    held_back: np.ndarray | None = None  # the last train document, kept in case val stays empty
    index = 0
    bar = tqdm(desc="tokenize", unit="tok", unit_scale=True, disable=not progress)
    try:
        for batch in _batches(texts, 256):
            for ids in tok.encode_batch(batch, settings.threads):
                arr = np.concatenate([np.asarray(ids, dtype=np.int64), eot])
                by_document = settings.split == "documents" and settings.val_fraction
                if by_document and _is_val(index, settings.seed, settings.val_fraction):
                    writers["val"].write(arr)
                    docs["val"] += 1
                else:
                    if held_back is not None:
                        writers["train"].write(held_back)
                    held_back = arr
                    docs["train"] += 1
                index += 1
                bar.update(len(arr))
        if held_back is not None:
            tiny = settings.split == "documents" and docs["val"] == 0 and docs["train"] > 1
            if settings.val_fraction and tiny:
                split = "val"  # a tiny corpus: give validation at least one document
                docs["train"] -= 1
                docs["val"] += 1
            else:
                split = "train"
            writers[split].write(held_back)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    if settings.split == "tail" and settings.val_fraction:
        moved_ends = _move_tail_to_val(
            out_dir, writers["train"], writers["val"], settings.val_fraction, tok.eot_id
        )
        if writers["val"].tokens == 0:
            raise StageError(
                f"tokenize: val_fraction={settings.val_fraction} of {writers['train'].tokens} tokens is none"
            )
        docs = {
            "train": docs["train"] - moved_ends,
            "val": moved_ends,
        }  # by where each document ends
    if writers["train"].tokens == 0:
        raise StageError("tokenize: no training tokens were produced (is the corpus empty?)")
    seconds = time.time() - start
    total = writers["train"].tokens + writers["val"].tokens
    meta = {
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "eot_id": tok.eot_id,
        "tokenizer": tok.fingerprint(),
        "documents": docs,
        "tokens": {s: w.tokens for s, w in writers.items()},
        "files": {s: w.files for s, w in writers.items()},
        "seconds": round(seconds, 2),
        "tokens_per_second": round(total / max(seconds, 1e-9)),
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def _move_tail_to_val(
    out_dir: Path, train: ShardWriter, val: ShardWriter, fraction: float, eot: int
) -> int:
    """Hold out the last `fraction` of the training tokens, as nanoGPT's char baselines do.
    Returns how many documents now end in validation."""
    remaining = int(train.tokens * fraction)
    tail: list[np.ndarray] = []
    while remaining:
        name = train.files[-1]
        arr = np.fromfile(out_dir / name, dtype=train.dtype)
        take = min(remaining, len(arr))
        tail.insert(0, arr[len(arr) - take :].astype(np.int64))
        if take == len(arr):
            (out_dir / name).unlink()
            train.files.pop()
        else:
            os.truncate(out_dir / name, (len(arr) - take) * train.dtype.itemsize)
        train.tokens -= take
        remaining -= take
    for part in tail:
        val.write(part)
    val.close()
    return int(sum((part == eot).sum() for part in tail))


def load_meta(tokens_dir: Path) -> dict[str, Any]:
    path = tokens_dir / "meta.json"
    if not path.is_file():
        raise StageError(f"{tokens_dir} has no meta.json: run `scratchlm tokenize` first")
    return json.loads(path.read_text())


def made_with(meta: dict[str, Any], tok: Tokenizer) -> bool:
    """Whether shards (their meta.json) read right with `tok`: made with it, or with the
    tokenizer that `tok` extends by special tokens added after its vocabulary (fine-tuning's
    chat and tool tokens), ids the shards never hold."""
    if meta.get("tokenizer") == tok.fingerprint():
        return True
    made_size = meta.get("vocab_size", 0)
    if tok.vocab_size <= made_size:
        return False
    kept = sorted((i, t) for t, i in tok.special_tokens.items() if i < made_size)
    if isinstance(tok, CharTokenizer):
        before: Tokenizer = CharTokenizer(tok.chars, [t for _, t in kept])
    elif isinstance(tok, BPETokenizer):
        before = BPETokenizer(tok.vocab, tok.pattern, {t: i for i, t in kept}, tok.merges)
    else:
        return False
    return before.vocab_size == made_size and before.fingerprint() == meta.get("tokenizer")


@dataclass
class TokenizeSummary:
    tokens: dict[str, int]  # per split
    documents: dict[str, int]
    tokens_per_second: float

    def headline(self) -> str:
        return f"{self.tokens['train']:,} train / {self.tokens['val']:,} val tokens"

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TokenizeSummary:
        return cls(meta["tokens"], meta["documents"], meta["tokens_per_second"])


# --------------------------------------------------------------------------- reading


class TokenStream:
    """The tokens of several shard files as one read-only array (memory-mapped, never loaded)."""

    def __init__(self, tokens_dir: Path, files: list[str], dtype: str):
        self.arrays = [np.memmap(tokens_dir / f, dtype=np.dtype(dtype), mode="r") for f in files]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, length: int) -> np.ndarray:
        out, pos = [], start
        while pos < start + length:
            i = bisect.bisect_right(self.starts, pos) - 1
            a = self.arrays[i]
            take = min(start + length - pos, len(a) - (pos - self.starts[i]))
            out.append(
                np.asarray(a[pos - self.starts[i] : pos - self.starts[i] + take], dtype=np.int64)
            )
            pos += take
        return np.concatenate(out)
