"""Built-in sanity tasks, made from held-out text, so any run can be scored with no download.

    cloze    a passage's opening, then 4 continuations of the same length: the real one and 3
             taken from elsewhere in the held-out text. Chance is 25%; a model that has learned
             anything about topic and flow does better.
    shuffle  the real continuation against the same words in another order. Chance is 50%; it
             asks about word order (syntax) rather than topic.

The items depend only on the text and the seed, never on the model or its tokenizer, so two runs
scored on the same held-out text see the same items (and --compare can pair them). No two items
share a context and continuation: a short text gives fewer items (the count says how many), and
one shorter than a single item gives none (the task is skipped, with the reason).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from scratchlm.errors import StageError
from scratchlm.eval.choice import Item

CONTEXT_WORDS, CONTINUATION_WORDS = 24, 6
WORD = re.compile(r"\S+")


class NotEnoughText(StageError):
    """The held-out text is too short for a single item of a built-in task."""


def _passages(texts: list[str]) -> list[tuple[str, list[re.Match]]]:
    need = CONTEXT_WORDS + CONTINUATION_WORDS
    out = [(t, words) for t in texts if len(words := list(WORD.finditer(t))) >= need]
    if not out:  # only short documents (posts, lines): read them as one text
        joined = "\n\n".join(texts)
        if len(words := list(WORD.finditer(joined))) >= need:
            return [(joined, words)]
        raise NotEnoughText(
            f"built-in tasks need at least {need} words of held-out text; there are {len(words)}"
        )
    return out


def _span(text: str, words: list[re.Match], first: int, count: int) -> str:
    """The text from the end of word first-1 to the end of word first+count-1: the words with
    their original spacing, starting with the whitespace before them."""
    start = words[first - 1].end() if first else words[first].start()
    return text[start : words[first + count - 1].end()]


def _pick(rng: random.Random, passages: list[tuple[str, list[re.Match]]]) -> tuple[str, str]:
    """A context of CONTEXT_WORDS words and the real continuation after it."""
    text, words = rng.choice(passages)
    start = rng.randrange(len(words) - CONTEXT_WORDS - CONTINUATION_WORDS + 1)
    cut = start + CONTEXT_WORDS
    context = text[words[start].start() : words[cut - 1].end()]
    return context, _span(text, words, cut, CONTINUATION_WORDS)


def _lead(s: str) -> str:
    return s[: len(s) - len(s.lstrip())]


def cloze(texts: list[str], n: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    passages = _passages(texts)
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(n * 3):  # a few draws fail (repeated text); stop once n items are made
        if len(items) == n:
            break
        context, real = _pick(rng, passages)
        if (context, real) in seen:  # one item counted twice would narrow the interval falsely
            continue
        seen.add((context, real))
        choices = [real]
        for _ in range(3):
            text, words = rng.choice(passages)
            other = _span(text, words, rng.randrange(1, len(words) - CONTINUATION_WORDS + 1), CONTINUATION_WORDS)  # fmt: skip
            choices.append(_lead(real) + other.lstrip())  # the same spacing: no cue in it
        if len(set(choices)) < 4:
            continue
        rng.shuffle(choices)
        items.append(Item(context, choices, choices.index(real), delimiter=""))
    return items


def shuffle(texts: list[str], n: int, seed: int) -> list[Item]:
    rng = random.Random(seed + 1)
    passages = _passages(texts)
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(n * 3):
        if len(items) == n:
            break
        context, real = _pick(rng, passages)
        if (context, real) in seen:
            continue
        seen.add((context, real))
        words = list(WORD.finditer(real))
        order = list(range(len(words)))
        rng.shuffle(order)
        # Same words, same spacing between them, another order.
        pieces, last = [], 0
        for slot, src in zip(words, order, strict=True):
            pieces += [real[last : slot.start()], words[src].group()]
            last = slot.end()
        fake = "".join(pieces)
        if fake == real:
            continue
        choices = [real, fake]
        rng.shuffle(choices)
        items.append(Item(context, choices, choices.index(real), delimiter=""))
    return items


BUILTIN_TASKS: dict[str, Callable[[list[str], int, int], list[Item]]] = {
    "cloze": cloze,
    "shuffle": shuffle,
}
