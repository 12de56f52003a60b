"""Byte-level BPE: the trainer and a plain-Python reference encoder.

Worked example. Train on the single word "aaabdaaabac" (as bytes a=97, b=98, ...):

    pairs:  aa:4  ab:2  bd:1  da:1  ba:1  ac:1
    merge 1: (a, a)   -> 256 "aa"     word: aa a b d aa a b a c
    pairs:  (aa,a):2  (a,b):2  ...     a tie at count 2: the greater pair of byte strings wins,
                                      ("aa", "a") > ("a", "b"), so
    merge 2: (aa, a)  -> 257 "aaa"    word: aaa b d aaa b a c
    merge 3: (aaa, b) -> 258 "aaab"   word: aaab d aaab a c

The textbook algorithm recounts every pair of every word after each merge. We count each
distinct pre-token ("word") once with its frequency, keep the count of every pair and the set
of words that contain it, and after a merge touch only those words. The next merge comes off a
max-heap whose stale entries are skipped when popped (a "lazy" heap).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from itertools import pairwise

import regex
from tqdm import tqdm

# tiktoken's patterns (r50k / cl100k). `$` here means end of text, as in tiktoken's regex engine.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}

TIE_RULE = "highest count; ties go to the lexicographically greater pair of byte strings"


def resolve_pattern(pattern: str) -> str:
    """`gpt2` / `gpt4` name a built-in split pattern; anything else is a regex of its own."""
    return PATTERNS.get(pattern, pattern)


def compile_pattern(pattern: str) -> regex.Pattern:
    # Python's `$` also matches before a final newline; tiktoken's matches only at the very end.
    return regex.compile(pattern.replace(r"\s++$", r"\s++\Z"))


def count_pretokens(texts: Iterable[str], pattern: str) -> Counter[bytes]:
    """How often each pre-token occurs, as UTF-8 bytes. Training only needs these counts."""
    split = compile_pattern(resolve_pattern(pattern))
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(split.findall(text))
    return Counter({word.encode("utf-8"): n for word, n in counts.items()})


def _heap_key(count: int, left: bytes, right: bytes) -> tuple:
    # heapq pops the smallest entry: negate the count, and invert the bytes so the
    # lexicographically greater pair comes first. 256 ends each string: a prefix then
    # sorts after its extensions, exactly reversing bytes ordering.
    inv = tuple(255 - b for b in left) + (256,) + tuple(255 - b for b in right) + (256,)
    return (-count, inv)


def _merge_word(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(
    word_counts: Mapping[bytes, int], num_merges: int, progress: bool = False
) -> list[tuple[int, int]]:
    """Learn up to `num_merges` merges from pre-token counts; merge i creates token 256 + i."""
    vocab = [bytes([i]) for i in range(256)]
    token_of = {b: i for i, b in enumerate(vocab)}
    words = [list(w) for w in word_counts]
    freq = list(word_counts.values())

    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words containing it
    for w, (word, n) in enumerate(zip(words, freq, strict=True)):
        for pair in pairwise(word):
            pair_count[pair] += n
            where[pair].add(w)
    heap = [(*_heap_key(c, vocab[a], vocab[b]), (a, b)) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = tqdm(total=num_merges, desc="bpe merges", unit="merge", disable=not progress)
    while len(merges) < num_merges and heap:
        neg_count, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # stale: this pair's count changed after the entry was pushed
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = token_of.get(merged)
        if new_id is None:  # a new token; else two different pairs spell the same bytes
            new_id = token_of[merged] = len(vocab)
            vocab.append(merged)
            merges.append(pair)
            bar.update()

        # Re-count only the words that contain the pair: subtract their old pairs, add the new.
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop(pair):
            old, n = words[w], freq[w]
            new = _merge_word(old, pair, new_id)
            old_pairs, new_pairs = list(pairwise(old)), list(pairwise(new))
            for p in old_pairs:
                delta[p] -= n
            for p in new_pairs:
                delta[p] += n
                where[p].add(w)
            for p in set(old_pairs) - set(new_pairs):
                if p != pair:
                    where[p].discard(w)
            words[w] = new
        del pair_count[pair]
        for p, d in delta.items():
            if d and p != pair:
                pair_count[p] += d
                if pair_count[p] > 0:
                    heapq.heappush(heap, (*_heap_key(pair_count[p], vocab[p[0]], vocab[p[1]]), p))
    bar.close()
    return merges


def merges_to_vocab(merges: Iterable[tuple[int, int]]) -> list[bytes]:
    """Token id -> bytes: the 256 single bytes, then one token per merge."""
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def encode_chunk(chunk: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Encode one pre-token: repeatedly merge the adjacent pair whose joined bytes rank lowest.

    This is tiktoken's rule (rank of the merged bytes), which is what makes our fast path and
    this reference agree exactly.
    """
    parts = [bytes([b]) for b in chunk]
    while len(parts) > 1:
        joined = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
        candidates = [(r, i) for i, r in enumerate(joined) if r is not None]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def encode_reference(text: str, ranks: Mapping[bytes, int], pattern: str) -> list[int]:
    """Plain-Python encoder of ordinary text (no special tokens): split, then BPE each piece."""
    ids: list[int] = []
    for piece in compile_pattern(resolve_pattern(pattern)).findall(text):
        ids.extend(encode_chunk(piece.encode("utf-8"), ranks))
    return ids
