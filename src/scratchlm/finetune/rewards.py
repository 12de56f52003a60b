r"""Tasks with checkable answers, and the verifier that turns a completion into a reward.

    {"prompt": "What is 12*37?", "answer": "444"}          a JSONL line (or a built-in task)
    extract_answer("It is 444.", r"(-?\d+(?:\.\d+)?)")     -> "444"  (the pattern's last match)
    reward("It is 444.", "444", pattern)                   -> 1.0

Built-in tasks need no download: `builtin:arithmetic:DIGITS:OPERATORS`, e.g.
`builtin:arithmetic:3:+-*` (default `builtin:arithmetic` = 3 digits, "+"), drawn from the
training split of data/arithmetic.py; their held-out prompts come from its held-out split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from scratchlm.data.arithmetic import problems
from scratchlm.errors import StageError
from scratchlm.finetune.records import RecordError

NUMBER = r"(-?\d+(?:\.\d+)?)"  # the default answer pattern: the last number in the reply
BUILTIN = "builtin:arithmetic"
TRAIN_PROBLEMS, HELDOUT_PROBLEMS = 20_000, 500


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str


def to_task(record: Any) -> Task:
    """A JSONL record as a Task (RecordError when it is not {"prompt": str, "answer": ...})."""
    if not isinstance(record, dict):
        raise RecordError("expected a JSON object")
    prompt, answer = record.get("prompt"), record.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecordError("'prompt' must be a non-empty string")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise RecordError("'answer' must be a string or a number")
    return Task(prompt, str(answer))


def parse_builtin(spec: str) -> tuple[int, str]:
    """`builtin:arithmetic[:DIGITS[:OPERATORS]]` -> (digits, operators)."""
    parts = spec.split(":")[2:]
    try:
        digits = int(parts[0]) if parts and parts[0] else 3
    except ValueError:
        raise StageError(f"{spec}: DIGITS must be a number, e.g. {BUILTIN}:3:+-") from None
    operators = parts[1] if len(parts) > 1 and parts[1] else "+"
    if not 1 <= digits <= 12 or set(operators) - set("+-*"):
        raise StageError(f"{spec}: 1 to 12 digits, operators from + - *, e.g. {BUILTIN}:3:+-")
    return digits, operators


def builtin_tasks(spec: str, split: str, count: int, seed: int) -> list[Task]:
    digits, operators = parse_builtin(spec)
    drawn = problems(count, digits, operators, split, seed)
    return [Task(p.question, str(p.answer)) for p in drawn]


def extract_answer(completion: str, pattern: str = NUMBER) -> str | None:
    """The last match of `pattern` in the completion (its first group, if it has one)."""
    matches = list(re.finditer(pattern, completion))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.groups() else last.group(0)


def same_answer(given: str, expected: str) -> bool:
    """Numbers compare as numbers ("3.50" == "3.5"); anything else as stripped text."""
    try:
        return Fraction(given.strip()) == Fraction(expected.strip())
    except (ValueError, ZeroDivisionError):
        return given.strip() == expected.strip()


TOOL_RESULT = re.compile(r"<\|result\|>.*?(<\|/result\|>|$)", re.S)


def reward(completion: str, expected: str, pattern: str = NUMBER) -> float:
    """1.0 when the completion's answer is the expected one, else 0.0. What a tool wrote into
    the completion (<|result|>...<|/result|>) is not the model's answer and is ignored."""
    answer = extract_answer(TOOL_RESULT.sub(" ", completion), pattern)
    return float(answer is not None and same_answer(answer, expected))
