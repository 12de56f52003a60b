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
# Pretraining text: an equation, a question and its answer, and a question answered by writing
# the expression out again (copying the operands is the skill a calculator call needs). The gap
# after the question varies, so the model learns to find the operands by what they are, not at
# a fixed distance: a chat template puts other tokens there.
FORMATS = ("{q}{gap}{a}", "{e}={a}", "{q}{gap}{e}={a}")
GAPS = (" ", "  ", "\n", " \n", "   ", "\n\n")


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


def corpus_lines(
    count: int, seed: int = 0, operators: str = "+", max_digits: int = 3
) -> Iterator[str]:
    """About `count` training-split problems as pretraining text, in the three FORMATS in
    turn: every small one there is, then a quarter
    of the rest with operands of `max_digits - 1` digits and the others with `max_digits`
    (the long ones are the hard ones, and there are many more of them to learn from)."""
    small = [p for d in range(1, max_digits - 1) for p in problems(count, d, operators, "train", seed)]  # fmt: skip
    middle = problems((count - len(small)) // 4, max_digits - 1, operators, "train", seed)
    large = problems(count - len(small) - len(middle), max_digits, operators, "train", seed)
    rng = random.Random(seed)
    for i, p in enumerate(small + middle + large):
        gap = rng.choice(GAPS)
        yield FORMATS[i % len(FORMATS)].format(q=p.question, gap=gap, e=p.expression, a=p.answer)
