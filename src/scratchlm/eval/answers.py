r"""Tasks with checkable answers: the verifier that turns a reply into a reward, and pass@1.

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

import torch

from scratchlm.data.arithmetic import problems
from scratchlm.errors import StageError
from scratchlm.eval.stats import wilson
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.infer.generate import generate_rows
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer

NUMBER = r"(-?\d+(?:\.\d+)?)"
# The system messages of the arithmetic fine-tuning data: whether the calculator may be used.
TOOLS_ON, TOOLS_OFF = (
    "tools: calculator",
    "tools: none",
)  # the default answer pattern: the last number in the reply
BUILTIN = "builtin:arithmetic"
TRAIN_PROBLEMS, HELDOUT_PROBLEMS = 20_000, 500


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str


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


# --------------------------------------------------------------------------- pass@1


@dataclass
class AnswerScores:
    correct: list[bool]
    replies: list[str]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(len(self.correct), 1)

    def summary(self) -> dict[str, Any]:
        """pass@1 with its 95% interval, and the first reply as an example."""
        k, n = sum(self.correct), len(self.correct)
        example = self.replies[0] if self.replies else ""
        return {"items": n, "acc": k / max(n, 1), "acc_ci": list(wilson(k, n)), "example": example}


def prompt_ids(
    tokenizer: Tokenizer, template: ChatTemplate | None, prompt: str, system: str = ""
) -> list[int]:
    """A task's prompt as the model reads it: a chat turn (with the system message, if any)
    for a chat model, else the text itself followed by a space (pretraining's format)."""
    if template is None:
        return tokenizer.encode(prompt + " ")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return template.render(tokenizer, messages, add_generation_prompt=True)[0]


@torch.inference_mode()
def score_answers(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    tasks: list[Task],
    *,
    system: str = "",
    tools: bool = False,
    pattern: str = NUMBER,
    max_new_tokens: int = 32,
    max_batch: int = 64,
) -> AnswerScores:
    """Greedy replies to every task, through the generation engine (the calculator runs when
    `tools`), and whether each one's answer is right."""
    stops = reply_stop_ids(template, tokenizer) if template else frozenset({tokenizer.eot_id})
    if template is None:
        stops = stops | {i for t, i in tokenizer.special_tokens.items()}
        stops = frozenset(stops | set(tokenizer.encode("\n")[:1]))  # one line: one answer
    rows = [
        Row(prompt_ids(tokenizer, template, t.prompt, system), max_new_tokens, Sampling(0.0),
            stop_ids=stops, tools=tools)
        for t in tasks
    ]  # fmt: skip
    for _ in generate_rows(model, tokenizer, rows, max_batch=max_batch):
        pass
    replies = [tokenizer.decode(r.ids[len(r.prompt) :]) for r in rows]
    correct = [
        reward(reply, t.answer, pattern) == 1.0 for reply, t in zip(replies, tasks, strict=True)
    ]
    return AnswerScores(correct, replies)
