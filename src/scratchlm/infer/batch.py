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
from scratchlm.infer.generate import complete
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
    """Continue every prompt, `batch_size` at a time, writing one JSON line per prompt."""
    if batch_size < 1:
        raise StageError("--batch-size must be at least 1")
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        for i in range(0, len(prompts), batch_size):
            part = prompts[i : i + batch_size]
            for prompt, row in zip(part, complete(model, tok, part, s, batch_size), strict=True):
                line = {
                    "prompt": prompt,
                    "completion": row.stream.text,
                    "finish_reason": row.finish_reason,
                    "prompt_tokens": len(row.prompt),
                    "completion_tokens": len(row.tokens),
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if output:
            out.close()
