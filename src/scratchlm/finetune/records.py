"""Fine-tuning data: records from JSONL, JSON, CSV or a built-in set, each with its line number.

A record that cannot be used (bad JSON, a missing field, a wrong type) is skipped and counted
with its line number; a file with no usable record at all is an error. Every task turns its
records into examples through a `convert` function that raises RecordError for a bad one.

    sft       {"instruction", "input"?, "output"}  (Alpaca)  or  {"messages": [{"role", "content"}]}
    classify  {"text", "label"}  (field names are settings; CSV columns alike)
    dpo       {"prompt", "chosen", "rejected"}  (prompt: a string or a list of messages)
    grpo      {"prompt", "answer"}  (the answer a verifier checks replies against)
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.eval.answers import Task
from scratchlm.finetune.builtin import builtin_records
from scratchlm.tokenizer.chat import check_messages


class RecordError(ValueError):
    """One record is unusable; the message says why (it is counted, not fatal)."""


@dataclass
class Loaded:
    """The usable examples of one file, and what was skipped: 'line N: why'."""

    source: str
    examples: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record or the error that parsing raised) of a .json or .jsonl file."""
    if path.name.lower().endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise StageError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise StageError(f"{path}: expected a JSON list of records")
        yield from ((i + 1, r) for i, r in enumerate(data))
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as e:  # (nested too deep)
                yield lineno, RecordError(f"not a JSON object ({type(e).__name__})")


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def load(spec: str, convert: Callable[[Any], Any], what: str) -> Loaded:
    """Read `spec` (a path or builtin:NAME) and convert each record; `what` names the setting."""
    if spec.startswith("builtin:"):
        records: Iterator[tuple[int, Any]] = enumerate(builtin_records(spec), 1)
    else:
        path = Path(spec)
        if not path.is_file():
            raise StageError(f"{what}={spec}: no such file")
        csv_file = path.name.lower().endswith(".csv")
        records = _csv_records(path) if csv_file else _json_records(path)
    loaded = Loaded(spec)
    for lineno, record in records:
        try:
            if isinstance(record, Exception):
                raise record
            if not isinstance(record, dict):
                raise RecordError("expected a JSON object")
            loaded.examples.append(convert(record))
        except RecordError as e:
            loaded.skipped.append(f"line {lineno}: {e}")
    if not loaded.examples:
        first = f" (first problem: {loaded.skipped[0]})" if loaded.skipped else ""
        raise StageError(f"{what}={spec}: no usable record{first}")
    return loaded


def split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out `fraction` of the examples (at least one when there are two or more)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = round(len(examples) * fraction)
    n = min(max(n, 1 if fraction > 0 and len(examples) > 1 else 0), len(examples) - 1)
    held = sorted(order[:n])
    kept = sorted(order[n:])
    return [examples[i] for i in kept], [examples[i] for i in held]


# --------------------------------------------------------------------------- converters


def _text(record: dict[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"'{key}' must be a string" if key in record else f"no '{key}' field")
    return value


def to_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """An SFT record as a conversation: chat `messages`, or Alpaca instruction/input/output."""
    if "messages" in record:
        try:
            messages = check_messages(record["messages"] or [])
        except StageError as e:
            raise RecordError(str(e)) from None
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError("no assistant message to learn from")
        return messages
    instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _text(record, "output")},
    ]


def to_labelled(text_field: str, label_field: str) -> Callable[[dict[str, Any]], tuple[str, str]]:
    def convert(record: dict[str, Any]) -> tuple[str, str]:
        text = _text(record, text_field)
        label = record.get(label_field)
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise RecordError(f"'{label_field}' must be a non-empty string or integer")
        if not text.strip():
            raise RecordError(f"'{text_field}' is empty")
        return text, str(label)

    return convert


def to_preference(record: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen reply, rejected reply)."""
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        try:
            messages = check_messages(prompt if isinstance(prompt, list) else [None])
        except StageError as e:
            raise RecordError(f"'prompt' must be a string or a list of messages ({e})") from None
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    if chosen == rejected:
        raise RecordError("'chosen' and 'rejected' are the same")
    return messages, chosen, rejected


def held_out(s: FinetuneSettings, convert: Any) -> tuple[list, list, dict[str, list[str]]]:
    """Training examples, validation examples, and the records skipped in each file."""
    data = load(s.data, convert, "finetune.data")
    skipped = {s.data: data.skipped}
    if s.val_data:
        val = load(s.val_data, convert, "finetune.val_data")
        skipped[s.val_data] = val.skipped
        return data.examples, val.examples, skipped
    train, held = split(data.examples, s.val_fraction, s.seed)
    return train, held, skipped


def skipped_summary(skipped: dict[str, list[str]]) -> dict[str, Any]:
    return {src: {"count": len(v), "examples": v[:5]} for src, v in skipped.items() if v}


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
