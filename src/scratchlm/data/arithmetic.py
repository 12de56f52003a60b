"""Integer arithmetic made on the fly: the text, fine-tuning sets and RL tasks of the
`arithmetic` recipe, with no download.

    problems(2000, digits=3, operators="+", split="train", seed=0)  -> [Problem("123+456", 579), ...]

A problem belongs to the held-out split or to the training split by a hash of its text, so the
two never share a problem, however many are drawn and in whatever order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
HELDOUT_SHARE = 0.1


@dataclass(frozen=True)
class Problem:
    expression: str  # "123+456"
    answer: int

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"


def split_of(expression: str) -> str:
    """ "heldout" for about HELDOUT_SHARE of all expressions, "train" for the rest: fixed."""
    h = int.from_bytes(hashlib.blake2b(expression.encode(), digest_size=8).digest(), "little")
    return "heldout" if h / 2**64 < HELDOUT_SHARE else "train"


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


def problems(
    count: int,
    digits: int = 3,
    operators: str = "+",
    split: str = "train",
    seed: int = 0,
    max_digits: int | None = None,
) -> list[Problem]:
    """`count` distinct problems of `split`: operands of `digits` digits (or from `digits` to
    `max_digits`), each operator drawn from `operators`. Fewer when the split has fewer."""
    unknown = set(operators) - set(OPERATORS)
    if unknown or not operators:
        raise ValueError(f"operators {operators!r}: choose from {''.join(OPERATORS)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r}: train or heldout")
    rng = random.Random(f"{seed}:{digits}:{max_digits}:{operators}:{split}")
    seen: dict[str, Problem] = {}
    lo, hi = digits, max_digits or digits
    possible = sum(10 ** (2 * d) for d in range(lo, hi + 1)) * len(operators)
    for _ in range(min(50 * count, 50 * possible)):
        if len(seen) == count:
            break
        op = rng.choice(operators)
        a, b = _operand(rng, rng.randint(lo, hi)), _operand(rng, rng.randint(lo, hi))
        expression = f"{a}{op}{b}"
        if expression not in seen and split_of(expression) == split:
            seen[expression] = Problem(expression, OPERATORS[op](a, b))
    return list(seen.values())


def corpus_lines(count: int, seed: int = 0, max_digits: int = 3) -> Iterator[str]:
    """Training-split problems of 1 to `max_digits` digits as pretraining text: equations
    ("12+37=49") and questions ("What is 12+37? 49"), half and half."""
    for digits in range(1, max_digits + 1):
        for i, p in enumerate(problems(count // max_digits, digits, "+-*", "train", seed)):
            yield f"{p.expression}={p.answer}" if i % 2 else f"{p.question} {p.answer}"
