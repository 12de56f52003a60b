"""Word n-grams of benchmark items, indexed so that millions of documents can be checked fast.

Words are GPT-3's (Brown et al. 2020, appendix C): lowercase, whitespace-delimited, without
punctuation ("Don't!" -> "dont"). Here every character that is not a letter, a digit or
whitespace is deleted (symbols, the underscore, and accents: NFKD, so "Café" is "cafe").

    index = NGramIndex([Benchmark("quiz", ["The river ran past the mill ..."])], n=13)
    index.scan(texts)   # for each text, the n-grams it shares with an item (Match)

No Python work per word:
  - normalising is one bytes.translate on the UTF-8 text for ASCII, and one bytes.replace
    per distinct non-ASCII character;
  - a chunk of documents is one byte array: words are found where whitespace ends and starts,
    and hashed all at once (a polynomial over their bytes from one prefix sum, then mixed);
  - an n-gram's key is a sum of its words' hashes times fixed random odd multipliers (64-bit,
    wrapping), for every window of the chunk at once;
  - a key is first looked up in a table of flags (one gather per key: almost every key stops
    there), then in the sorted array of the index's keys;
  - a key found is compared word by word with the item's n-gram, so a hash collision never
    costs a document.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from scratchlm.data.benchmarks import Benchmark

SEED = 20200528  # GPT-3's arXiv date: the multipliers are fixed, so keys are reproducible
CHUNK_BYTES = 1 << 22  # text hashed in one numpy pass (a bigger document goes alone)


# --------------------------------------------------------------------------- words

_CONTROL = bytes([*range(0, 9), *range(14, 28), 127])  # ASCII controls that are not whitespace
_ASCII_DELETE = string.punctuation.encode() + _CONTROL
_ASCII_SPACES = bytes.maketrans(b"\x1c\x1d\x1e\x1f", b"    ")  # str.split's, not bytes.split's
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_TOKEN = re.compile(r"\S+")


@functools.lru_cache(maxsize=1 << 16)
def _clean_char(c: str) -> bytes:
    """A non-ASCII character as n-grams see it: letters and digits kept (accents split off by
    NFKD and dropped, "é" -> "e"), whitespace made a space, anything else deleted."""
    chars = unicodedata.normalize("NFKD", c).lower()
    kept = "".join(" " if x.isspace() else x if x.isalnum() else "" for x in chars)
    return kept.encode("utf-8", "surrogatepass")


def normalize_text(text: str) -> bytes:
    """The text as n-grams see it, UTF-8 encoded: lowercase, only letters, digits and ASCII
    whitespace left; normalize_text(t).split() are its words. ASCII is done by one
    bytes.translate; then each distinct non-ASCII character by one bytes.replace."""
    raw = text.lower().encode("utf-8", "surrogatepass").translate(_ASCII_SPACES, _ASCII_DELETE)
    if raw.isascii():
        return raw
    for c in set(_NON_ASCII.findall(raw.decode("utf-8", "surrogatepass"))):
        clean = _clean_char(c)
        if clean != c.encode("utf-8", "surrogatepass"):
            raw = raw.replace(c.encode("utf-8", "surrogatepass"), clean)
    return raw


def normalize_words(text: str) -> list[str]:
    return normalize_text(text).decode("utf-8", "surrogatepass").split()


def word_spans(text: str) -> list[tuple[int, int]]:
    """Where each of normalize_words(text) is in `text` (start, end): the whitespace-delimited
    token it comes from (a token all punctuation gives no word)."""
    spans = []
    for m in _TOKEN.finditer(text):
        spans += [m.span()] * len(normalize_words(m.group()))
    return spans


# --------------------------------------------------------------------------- hashing

_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_BASE = 0x100000001B3  # FNV's 64-bit prime: odd, so it has an inverse modulo 2**64


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < size (kept for the usual chunk sizes; a huge
    document's are made for it and let go)."""
    return _kept_powers(size) if size <= 1 << 23 else _make_powers(size)


@functools.lru_cache(maxsize=4)
def _kept_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    return _make_powers(size)


def _make_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    inverse = pow(_BASE, -1, 2**64)
    up = np.cumprod(np.full(size, _BASE, dtype=np.uint64))  # wraps modulo 2**64, as meant
    down = np.cumprod(np.full(size, inverse, dtype=np.uint64))
    one = np.ones(1, dtype=np.uint64)
    return np.concatenate((one, up[:-1])), np.concatenate((one, down[:-1]))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of the result depends on every bit of x."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class Words:
    """The words of some texts, found and hashed in one byte array."""

    buf: np.ndarray  # the normalised texts, joined by newlines (uint8)
    starts: np.ndarray  # each word's first byte
    ends: np.ndarray  # one past its last byte
    hashes: np.ndarray  # uint64
    text_of: np.ndarray  # which text each word is in
    first: np.ndarray  # the index of each text's first word

    def words(self, i: int, n: int) -> list[str]:
        """Words i .. i + n - 1."""
        return _decode(self.buf[self.starts[i] : self.ends[i + n - 1]]).split()

    def all_words(self) -> list[str]:
        return _decode(self.buf).split()


def _decode(buf: np.ndarray) -> str:
    return buf.tobytes().decode("utf-8", "surrogatepass")


def hash_words(texts: Sequence[str]) -> Words:
    parts = [normalize_text(t) for t in texts]
    buf = np.frombuffer(b"\n".join(parts) + b"\n", dtype=np.uint8)
    edges = np.diff((~_WHITESPACE[buf]).astype(np.int8), prepend=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    size = 1 << max(int(len(buf)).bit_length(), 16)
    up, down = _powers(size)
    prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
    np.cumsum(buf.astype(np.uint64) * up[: len(buf)], out=prefix[1:])
    hashes = _mix((prefix[ends] - prefix[starts]) * down[starts])  # each word from its own start
    text_starts = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])
    text_of = np.searchsorted(text_starts, starts, side="right") - 1
    first = np.searchsorted(text_of, np.arange(len(parts)))
    return Words(buf, starts, ends, hashes, text_of, first)


def _multipliers(n: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True) | np.uint64(1)


def window_keys(w: Words, n: int, mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The key of every n-word window inside one text, and the index of its first word."""
    m = len(w.hashes) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    starts = np.flatnonzero(w.text_of[:m] == w.text_of[n - 1 :])
    keys = w.hashes[:m] * mult[0]
    for k in range(1, n):  # wraps modulo 2**64, as meant
        keys += w.hashes[k : k + m] * mult[k]
    return keys[starts], starts


# --------------------------------------------------------------------------- the index


@dataclass
class Match:
    """One n-gram a document shares with a benchmark item."""

    benchmark: int  # index into the index's benchmarks
    item: int  # index of the item within its benchmark
    word: int  # where the n-gram starts among the document's words
    at: int  # where it starts among the index's words (NGramIndex.ngram_text)


def _batches(texts: Sequence[str], budget: int) -> Iterator[tuple[int, Sequence[str]]]:
    """(offset, texts) batches of about `budget` characters."""
    begin, size = 0, 0
    for i, t in enumerate(texts):
        if size and size + len(t) > budget:
            yield begin, texts[begin:i]
            begin, size = i, 0
        size += len(t)
    if begin < len(texts):
        yield begin, texts[begin:]


class NGramIndex:
    """Every n-gram of every item of some benchmarks, ready to be looked up."""

    def __init__(self, benchmarks: Sequence[Benchmark], n: int = 13):
        self.benchmarks, self.n = list(benchmarks), n
        self.mult = _multipliers(n)
        texts = [t for bench in self.benchmarks for t in bench.texts]
        self.item_of = [(b, i) for b, bench in enumerate(self.benchmarks) for i in range(len(bench.texts))]  # fmt: skip
        self.words: list[str] = []  # every item's words, one item after another
        item_starts, keys, key_starts = [], [], []
        for _, batch in _batches(texts, CHUNK_BYTES):
            w = hash_words(batch)
            k, s = window_keys(w, n, self.mult)
            keys.append(k)
            key_starts.append(s + len(self.words))
            item_starts.append(w.first + len(self.words))
            self.words += w.all_words()
        self.item_starts = np.concatenate(item_starts) if item_starts else np.zeros(0, np.int64)
        lengths = np.diff(np.append(self.item_starts, len(self.words)))
        self.too_short = [0] * len(self.benchmarks)
        for (b, _), length in zip(self.item_of, lengths, strict=True):
            self.too_short[b] += int(length < n)
        keys_all = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        order = np.argsort(keys_all, kind="stable")
        self.keys = keys_all[order]
        self.key_starts = (np.concatenate(key_starts) if key_starts else np.zeros(0, np.int64))[order]  # fmt: skip
        # A table of 2**bits flags, ~32 per key: a key not flagged is not in the index.
        bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 32)), 16, 27))
        self.shift = np.uint64(64 - bits)
        self.flags = np.zeros(1 << bits, dtype=bool)
        self.flags[self.keys >> self.shift] = True

    @property
    def ngrams(self) -> int:
        return len(self.keys)

    def ngram_text(self, at: int) -> str:
        """The words of the index's n-gram that starts at `at` (a Match's)."""
        return " ".join(self.words[at : at + self.n])

    def scan(self, texts: Sequence[str]) -> list[list[Match]]:
        """For each text, every n-gram it shares with an item (in order of position)."""
        found: list[list[Match]] = [[] for _ in texts]
        if not len(self.keys):
            return found
        for offset, batch in _batches(texts, CHUNK_BYTES):
            w = hash_words(batch)
            keys, starts = window_keys(w, self.n, self.mult)
            maybe = np.flatnonzero(self.flags[keys >> self.shift])
            if not len(maybe):
                continue
            pos = np.searchsorted(self.keys, keys[maybe])
            pos[pos == len(self.keys)] = 0
            for j in maybe[self.keys[pos] == keys[maybe]]:
                self._confirm(w, int(starts[j]), keys[j], found, offset)
        return found

    def _confirm(self, w: Words, start: int, key: np.uint64, found: list, offset: int) -> None:
        """Record the items whose n-gram really is the one at `start` (not a hash collision)."""
        window = w.words(start, self.n)
        text = int(w.text_of[start])
        lo = int(np.searchsorted(self.keys, key, side="left"))
        hi = int(np.searchsorted(self.keys, key, side="right"))
        seen: set[int] = set()
        for at in self.key_starts[lo:hi]:
            if self.words[at : at + self.n] != window:
                continue
            g = int(np.searchsorted(self.item_starts, at, side="right")) - 1
            if g not in seen:
                seen.add(g)
                b, i = self.item_of[g]
                found[offset + text].append(Match(b, i, start - int(w.first[text]), int(at)))
