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
run of letters / digits (with inner apostrophes), or a single punctuation mark. As in datatrove,
punctuation marks count as words in the ratios that divide by the number of words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import regex

WORD = regex.compile(r"https?://\S+|www\.\S+|\w+(?:['’]\w+)*|\.{2,}|[^\w\s]", regex.V1)
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
    real = [w for w in words if any(ch not in PUNCTUATION for ch in w)]
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
    alpha = sum(any(c.isalpha() for c in w) for w in words)
    if s.min_alpha_words_ratio and alpha / n_words < s.min_alpha_words_ratio:
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


def _ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return list(zip(*(ids[i:] for i in range(n)), strict=False))  # the shorter tails end it


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
    # n-grams as tuples of small ints: hashing them is far cheaper than joining strings
    index: dict[str, int] = {}
    ids = [index.setdefault(w, len(index)) for w in words]
    vocab = list(index)  # id -> word (a dict keeps insertion order)
    lengths = [len(w) for w in words]
    for n, limit in enumerate(s.max_top_ngram_frac, start=2):
        if len(ids) < n:
            break
        gram, count = Counter(_ngrams(ids, n)).most_common(1)[0]
        top_chars = sum(len(vocab[g]) for g in gram) + n - 1  # the words joined with spaces
        if top_chars * count / len(text) > limit:
            return f"top_{n}_gram"
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    for n, limit in enumerate(s.max_dup_ngram_frac, start=5):
        grams = _ngrams(ids, n)
        if len(set(grams)) == len(grams):
            break  # no repeated n-gram, so no repeated longer one either
        seen: set[tuple[int, ...]] = set()
        repeated, i = 0, 0
        while i < len(grams):
            if grams[i] in seen:  # count it, then skip past it (non-overlapping, as Gopher)
                repeated += prefix[i + n] - prefix[i]
                i += n
            else:
                seen.add(grams[i])
                i += 1
        if repeated / len(text) > limit:
            return f"duplicated_{n}_n_grams"
    return None


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
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+\S)")


def count_sentences(line: str) -> int:
    return len(_SENTENCE_END.findall(line)) + 1 if line.strip() else 0


def c4(text: str, s: Any) -> tuple[str, str | None]:
    """The text with the C4 line rules applied, and a reason when the document goes."""
    rules = set(s.c4_rules)
    sentences = 0
    kept = []
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(w) > s.c4_max_word_length for w in words):
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
        sentences += count_sentences(line)
        kept.append(line)
    if sentences < s.c4_min_sentences:
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
