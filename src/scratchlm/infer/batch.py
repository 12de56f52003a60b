"""`scratchlm generate RUN --input FILE`: many prompts, generated in batches, out as JSONL.

The input has one prompt a line; a line holding a JSON object {"prompt": ...} is read as
JSON, for prompts that span lines. Each output line is
{"prompt", "completion", "finish_reason", "prompt_tokens", "completion_tokens"}, in input order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from scratchlm.config import GenerateSettings
from scratchlm.errors import StageError
from scratchlm.infer.generate import Row, generate_rows, rows_for
from scratchlm.tokenizer.tokenizer import Tokenizer


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise StageError(f"{path}: no such file (expected one prompt a line)")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None  # text that merely starts with a brace
            if isinstance(obj, dict):
                if not isinstance(obj.get("prompt"), str):
                    raise StageError(f'{path}:{n}: a JSON line needs a string "prompt"')
                prompts.append(obj["prompt"])
                continue
        if line.strip():
            prompts.append(line)
    if not prompts:
        raise StageError(f"{path}: no prompts (one prompt a line)")
    return prompts


def generate_file(
    model: Any,
    tok: Tokenizer,
    prompts: list[str],
    s: GenerateSettings,
    output: str | None,
    batch_size: int,
) -> None:
    """Continue every prompt, `batch_size` generating at once, writing one JSON line per prompt
    (a row that failed says so in "error"; the others are unharmed)."""
    if batch_size < 1:
        raise StageError("--batch-size must be at least 1")
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        # The engine keeps batch_size rows generating: a finished row's place goes to the next
        # prompt at once. Lines go out in input order, each once every row before it is done.
        rows = rows_for(tok, prompts, s)
        written = 0
        for _ in generate_rows(model, tok, rows, max_batch=batch_size):
            while written < len(rows) and rows[written].finish_reason is not None:
                out.write(json.dumps(_line(prompts[written], rows[written]), ensure_ascii=False) + "\n")  # fmt: skip
                written += 1
            out.flush()
    finally:
        if output:
            out.close()


def _line(prompt: str, row: Row) -> dict[str, Any]:
    line = {
        "prompt": prompt,
        "completion": row.stream.text,
        "finish_reason": row.finish_reason,
        "prompt_tokens": len(row.prompt),
        "completion_tokens": len(row.tokens),
    }
    if row.error:  # this row failed; the others are unharmed
        line["error"] = row.error
    return line
