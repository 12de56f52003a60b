"""Heuristic quality filters: the Gopher, C4 and FineWeb rules, with the published thresholds.

Each filter reads one document and returns why it should go (a reason such as
"gopher_too_many_hashes"), or None to keep it; the C4 filter may also remove lines. The rules
and their order follow the papers and HF datatrove's implementation, so a decision can be
checked against a well-known reference (bench/curate.py measures the agreement):

    gopher      Rae et al. 2021 (Gopher), section A.1.1: length, word length, symbols, bullets,
                ellipses, alphabetic words, stop words
    repetition  the same paper, table A1: duplicate lines, paragraphs and n-grams
    c4          Raffel et al. 2020 (T5): line rules, then documents with too few sentences
    fineweb     Penedo et al. 2024: punctuated lines, short lines, duplicated lines, lists

Words are split the way spaCy splits English closely enough to agree on decisions: a URL, a
run of letters / digits (with inner apostrophes), an ellipsis, or a single punctuation mark. As
in datatrove, punctuation marks count as words in the symbol ratios; unlike datatrove, the
alphabetic-word ratio counts real words only (see `gopher`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

WORD = re.compile(r"https?://\S+|www\.\S+|\w+(?:['’]\w+)*|\.{2,}|[^\w\s]")
STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
# datatrove's PUNCTUATION: ASCII and common CJK / typographic marks, and control characters
PUNCTUATION = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(chr(x) for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))
)
TERMINAL_PUNCTUATION = (".", "!", "?", "…", "。", "！", "？", '"', "'", "”", "’")


def words_of(text: str) -> list[str]:
    return WORD.findall(text)


# --------------------------------------------------------------------------- Gopher quality


def gopher(text: str, s: Any, words: list[str] | None = None) -> str | None:
    words = words if words is not None else words_of(text)
    n_words = len(words)
    # a token is a symbol when it is one punctuation mark or an ellipsis (see WORD)
    real = [w for w in words if w not in PUNCTUATION and not w.startswith("..")]
    if s.gopher_min_words and len(real) < s.gopher_min_words:
        return "gopher_short_doc"
    if s.gopher_max_words and len(real) > s.gopher_max_words:
        return "gopher_long_doc"
    mean = sum(map(len, real)) / len(real) if real else 0.0
    if s.min_mean_word_length and mean < s.min_mean_word_length:
        return "gopher_short_words"
    if s.max_mean_word_length and mean > s.max_mean_word_length:
        return "gopher_long_words"
    if not n_words:
        return "gopher_short_doc"
    if s.max_symbol_word_ratio and text.count("#") / n_words > s.max_symbol_word_ratio:
        return "gopher_too_many_hashes"
    ellipses = text.count("...") + text.count("…")
    if s.max_symbol_word_ratio and ellipses / n_words > s.max_symbol_word_ratio:
        return "gopher_too_many_ellipses"
    lines = text.splitlines()
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    if s.max_bullet_lines_ratio and bullets / len(lines) > s.max_bullet_lines_ratio:
        return "gopher_too_many_bullets"
    trailing = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if s.max_ellipsis_lines_ratio and trailing / len(lines) > s.max_ellipsis_lines_ratio:
        return "gopher_too_many_end_ellipses"
    # Over real words only: datatrove divides by all tokens, punctuation marks included, which
    # drops much ordinary prose (a deliberate difference, measured in bench/curate.py)
    alpha = sum(1 for w in real if w.isalpha() or any(c.isalpha() for c in w))
    if s.min_alpha_words_ratio and alpha / max(len(real), 1) < s.min_alpha_words_ratio:
        return "gopher_too_few_alpha_words"
    if s.min_stop_words and len(STOP_WORDS.intersection(words)) < s.min_stop_words:
        return "gopher_too_few_stop_words"
    return None


# --------------------------------------------------------------------------- Gopher repetition


def _duplicates(items: Sequence[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def repetition(text: str, s: Any, words: list[str] | None = None) -> str | None:
    if not text:
        return "empty"
    paragraphs = _PARAGRAPHS.split(text.strip())
    dups, chars = _duplicates(paragraphs)
    if s.max_dup_para_frac and dups / len(paragraphs) > s.max_dup_para_frac:
        return "dup_para_frac"
    if s.max_dup_para_char_frac and chars / len(text) > s.max_dup_para_char_frac:
        return "dup_para_char_frac"
    lines = _LINES.split(text)
    dups, chars = _duplicates(lines)
    if s.max_dup_line_frac and dups / len(lines) > s.max_dup_line_frac:
        return "dup_line_frac"
    if s.max_dup_line_char_frac and chars / len(text) > s.max_dup_line_char_frac:
        return "dup_line_char_frac"
    words = words if words is not None else words_of(text)
    if len(words) < 2:
        return None
    # Each word becomes an id and each n-gram one 64-bit number (a polynomial hash of its ids;
    # a collision among a document's n-grams has probability ~1e-12), so counting and finding
    # repeats are numpy sorts instead of Python loops over tuples.
    index = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(index.__getitem__, words), np.uint64, len(words))
    prefix = np.concatenate([[0], np.cumsum([len(w) for w in words])])
    for n, limit in enumerate(s.max_top_ngram_frac, start=2):
        if len(words) < n:
            break
        _, first, counts = np.unique(ngram_keys(ids, n), return_index=True, return_counts=True)
        top = counts.max()
        at = first[counts == top].min()  # ties: the n-gram seen first, as Counter.most_common
        if (prefix[at + n] - prefix[at] + n - 1) * top / len(text) > limit:
            return f"top_{n}_gram"
    for n, limit in enumerate(s.max_dup_ngram_frac, start=5):
        if len(words) < n:
            break
        repeated = repeated_ngram_chars(ngram_keys(ids, n), n, prefix)
        if repeated is None:
            break  # no repeated n-gram, so no repeated longer one either
        if repeated / len(text) > limit:
            return f"duplicated_{n}_n_grams"
    return None


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """One number per n-gram of word ids (uint64 arithmetic wraps: a hash, not a packing)."""
    keys = ids[: len(ids) - n + 1].copy()
    for j in range(1, n):
        keys = keys * np.uint64(1_000_003) + ids[j : len(ids) - n + 1 + j]
    return keys


def repeated_ngram_chars(keys: np.ndarray, n: int, prefix: np.ndarray) -> int | None:
    """Characters in repeated n-grams, counted as Gopher does: walk the n-grams; one seen
    before counts its characters and the walk jumps past it (so overlaps count once); any
    other is remembered. None when no n-gram repeats at all.

    Exactly that walk, but only the repeats are visited one by one: everything between two
    repeats is a first occurrence, remembered unless a jump skipped it.
    """
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = first_index[inverse]  # where each position's n-gram first occurs
    repeats = np.flatnonzero(first != np.arange(len(keys)))
    if not len(repeats):
        return None
    jumps: list[int] = []  # start of each skipped window [p + 1, p + n)
    added_later: set[int] = set()  # n-grams remembered at a repeat, their first was skipped
    repeated, walk = 0, 0
    for p in repeats.tolist():
        if p < walk:
            continue  # inside a jump
        f = int(first[p])
        k = bisect.bisect_right(jumps, f) - 1
        first_skipped = k >= 0 and f < jumps[k] + n - 1
        if not first_skipped or int(keys[p]) in added_later:
            repeated += int(prefix[p + n] - prefix[p])
            jumps.append(p + 1)
            walk = p + n
        else:
            added_later.add(int(keys[p]))
            walk = p + 1
    return repeated


# --------------------------------------------------------------------------- C4

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=[ \t]+\S)")  # inside a line


def count_sentences(lines: list[str]) -> int:
    """Sentences in non-empty lines: each line is one, plus one per sentence end inside it."""
    return len(_SENTENCE_END.findall("\n".join(lines))) + sum(1 for line in lines if line)


def c4(text: str, s: Any) -> tuple[str, str | None]:
    """The text with the C4 line rules applied, and a reason when the document goes."""
    rules = set(s.c4_rules)
    kept = []
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if len(line) > s.c4_max_word_length and max(map(len, words)) > s.c4_max_word_length:
            continue
        if "citations" in rules:
            line = _CITATION.sub("", line)
        if "terminal_punct" in rules and (not line.endswith(_C4_END) or line.endswith("...")):
            continue
        if len(words) < s.c4_min_words_per_line:
            continue
        lower = line.lower()
        if "lorem_ipsum" in rules and "lorem ipsum" in lower:
            return text, "c4_lorem_ipsum"
        if "javascript" in rules and "javascript" in lower:
            continue
        if "curly_bracket" in rules and "{" in line:
            return text, "c4_curly_bracket"
        if "policy" in rules and any(p in lower for p in _POLICY):
            continue
        kept.append(line)
    if count_sentences(kept) < s.c4_min_sentences:
        return text, "c4_too_few_sentences"
    return "\n".join(kept).strip(), None


# --------------------------------------------------------------------------- FineWeb


def fineweb(text: str, s: Any, words: list[str] | None = None) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "empty"
    if (
        sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)
        < s.fineweb_min_punct_lines
    ):
        return "fineweb_line_punct_ratio"
    if sum(len(line) <= 30 for line in lines) / len(lines) > s.fineweb_max_short_lines:
        return "fineweb_short_line_ratio"
    if _duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) > s.fineweb_max_dup_line_chars:
        return "fineweb_char_dup_ratio"
    words = words if words is not None else words_of(text)
    if text.count("\n") / max(len(words), 1) > s.fineweb_max_newline_ratio:
        return "fineweb_list_ratio"
    return None


# --------------------------------------------------------------------------- length, bad words


def length(text: str, s: Any) -> str | None:
    n = len(text.split())
    if n < s.min_words:
        return "too_few_words"
    if s.max_words and n > s.max_words:
        return "too_many_words"
    return None


def badwords(text: str, words: frozenset[str], phrases: Sequence[str]) -> str | None:
    """C4's rule: a document holding any listed word (whole words, any case) goes."""
    if words and not words.isdisjoint(w.lower() for w in WORD.findall(text)):
        return "bad_words"
    lower = text.lower()
    if any(p in lower for p in phrases):
        return "bad_words"
    return None
