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

import contextlib
import heapq
import multiprocessing
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, islice, pairwise

import regex
from tqdm import tqdm

# tiktoken's patterns (r50k / cl100k). `$` here means end of text, as in tiktoken's regex engine.
# gpt4-digits is cl100k with every digit a piece of its own (as Llama and DeepSeek split
# numbers): no token spans two digits, so column arithmetic is easier to learn.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "gpt4-digits": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}

TIE_RULE = "highest count; ties go to the lexicographically greater pair of byte strings"


def resolve_pattern(pattern: str) -> str:
    """`gpt2` / `gpt4` / `gpt4-digits` name a built-in pattern; anything else is a regex."""
    return PATTERNS.get(pattern, pattern)


def compile_pattern(pattern: str) -> regex.Pattern:
    # Python's `$` also matches before a final newline; tiktoken's matches only at the very end.
    return regex.compile(pattern.replace(r"\s++$", r"\s++\Z"))


def _count_chunk(args: tuple[list[str], str]) -> tuple[Counter[str], int]:
    texts, pattern = args
    split = compile_pattern(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split.findall(text))
    return counts, sum(map(len, texts))


def _chunks(texts: Iterable[str], pattern: str, chars: int) -> Iterator[tuple[list[str], str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch, pattern
            batch, size = [], 0
    if batch:
        yield batch, pattern


def count_pretokens(
    texts: Iterable[str],
    pattern: str,
    workers: int = 1,
    chunk_chars: int = 1_000_000,
    progress: bool = False,
) -> Counter[bytes]:
    """How often each pre-token occurs, as UTF-8 bytes: all that training needs.

    With `workers` > 1 the texts are split by regex in that many processes, a chunk of
    about `chunk_chars` characters at a time, so memory holds only a few chunks at once.
    """
    pattern = resolve_pattern(pattern)
    counts: Counter[str] = Counter()
    chunks = _chunks(texts, pattern, chunk_chars)
    head = list(islice(chunks, 2))
    bar = tqdm(desc="count pre-tokens", unit="char", unit_scale=True, disable=not progress)
    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(head) < 2:  # a single chunk is not worth starting processes
            results = map(_count_chunk, chain(head, chunks))
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = stack.enter_context(ctx.Pool(workers))
            results = pool.imap_unordered(_count_chunk, chain(head, chunks))
        for chunk_counts, chars in results:
            counts.update(chunk_counts)
            bar.update(chars)
    bar.close()
    return Counter({word.encode("utf-8"): n for word, n in counts.items()})


def _descending(token: bytes) -> tuple[int, ...]:
    # heapq pops the smallest entry; to pop the lexicographically *greater* pair first we
    # compare inverted bytes. 256 closes each string, so a prefix sorts after its extensions
    # ("ab" after "abc"), which exactly reverses the usual order of byte strings.
    return (*(255 - b for b in token), 256)


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `word`, left to right, by `new_id`."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if word[i] == a and i + 1 < n and word[i + 1] == b:
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
    token_of = {t: i for i, t in enumerate(vocab)}
    order = [_descending(t) for t in vocab]  # token id -> its heap sort key
    words = [list(w) for w in word_counts]
    freq = list(word_counts.values())

    # 1. Count every adjacent pair once, remembering which words contain it.
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, n) in enumerate(zip(words, freq, strict=True)):
        for pair in pairwise(word):
            pair_count[pair] += n
            where[pair].add(w)
    # 2. A max-heap of (count, pair): entries go stale when a count changes; a fresh entry is
    #    pushed then, and stale ones are recognised (count differs) and dropped when popped.
    heap = [(-c, order[a], order[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = tqdm(total=num_merges, desc="bpe merges", unit="merge", disable=not progress)
    while len(merges) < num_merges and heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        pair = (a, b)
        if neg_count == 0 or pair_count.get(pair, 0) != -neg_count:
            continue
        # 3. The winner becomes a token (unless another pair already spelled the same bytes).
        merged = vocab[a] + vocab[b]
        new_id = token_of.get(merged)
        if new_id is None:
            new_id = token_of[merged] = len(vocab)
            vocab.append(merged)
            order.append(_descending(merged))
            merges.append(pair)
            bar.update()
        # 4. Re-count only the words that contain the pair: their old pairs out, new pairs in.
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop(pair):
            old = words[w]
            if a not in old:
                continue  # the index is lazy: this word lost the pair to an earlier merge
            new = _merge_word(old, a, b, new_id)
            if len(new) == len(old):
                continue
            n = freq[w]
            for p in pairwise(old):
                delta[p] -= n
            for p in pairwise(new):
                delta[p] += n
                if new_id in p:  # only pairs with the new token are new to the index
                    where[p].add(w)
            words[w] = new
        del pair_count[pair]
        for p, d in delta.items():
            if d and p != pair:
                c = pair_count[p] = pair_count[p] + d
                if c > 0:
                    heapq.heappush(heap, (-c, order[p[0]], order[p[1]], p[0], p[1]))
    bar.close()
    return merges


def merges_to_vocab(merges: Iterable[tuple[int, int]]) -> list[bytes]:
    """Token id -> bytes: the 256 single bytes, then one token per merge."""
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def encode_chunk(
    chunk: bytes, ranks: Mapping[bytes, int], max_rank: int | None = None
) -> list[bytes]:
    """Encode one pre-token: repeatedly merge the adjacent pair whose joined bytes rank lowest.

    This is tiktoken's rule (rank of the merged bytes), which is what makes our fast path and
    this reference agree exactly. Returns the parts as bytes; with `max_rank`, only tokens
    ranked below it may form (used to find which pair makes a token).
    """
    parts = [bytes([b]) for b in chunk]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def encode_piece(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Ids of one pre-token. Like tiktoken, a pre-token that is itself a token is taken whole."""
    if piece in ranks:
        return [ranks[piece]]
    return [ranks[p] for p in encode_chunk(piece, ranks)]


def encode_reference(text: str, ranks: Mapping[bytes, int], pattern: str) -> list[int]:
    """Plain-Python encoder of ordinary text (no special tokens): split, then BPE each piece."""
    ids: list[int] = []
    for piece in compile_pattern(resolve_pattern(pattern)).findall(text):
        ids.extend(encode_piece(piece.encode("utf-8"), ranks))
    return ids
