"""`scratchlm eval`: load a model, score perplexity and tasks, return one JSON-able result.

evaluate(model, tok, settings, heldout)   the numbers, for any model in memory
evaluate_path(path, settings, ...)        a run folder or an `export hf` folder, end to end
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from scratchlm import runs
from scratchlm.config import EvalSettings
from scratchlm.errors import StageError
from scratchlm.eval.answers import BUILTIN as ANSWER_TASKS
from scratchlm.eval.answers import (
    HELDOUT_PROBLEMS,
    TOOLS_OFF,
    TOOLS_ON,
    builtin_tasks,
    score_answers,
)
from scratchlm.eval.choice import Item, load_items, score_items
from scratchlm.eval.overlap import TrainingText, overlap, training_text
from scratchlm.eval.perplexity import (
    effective_stride,
    heldout_documents,
    perplexity,
    shard_documents,
)
from scratchlm.eval.stats import wilson
from scratchlm.eval.tasks import BUILTIN_TASKS, NotEnoughText
from scratchlm.infer.tools import ToolUse
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer


def default_heldout(run_dir: Path) -> Path | None:
    """The pipeline's token shards beside a run (<work>/runs/NAME -> <work>/tokens), if any."""
    tokens = run_dir.parent.parent / "tokens"
    return tokens if (tokens / "meta.json").is_file() else None


def _subsample(items: list[Item], limit: int, seed: int) -> list[Item]:
    # A seeded sample, kept in file order: two runs with the same settings get the same items.
    if not limit or len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def input_files(s: EvalSettings) -> list[Path]:
    """The files an evaluation reads besides the run: task files and a held-out file (the
    pipeline hashes them into the eval stage's key, so an edited file re-runs it)."""
    specs = [t for t in s.tasks if t not in BUILTIN_TASKS] + ([s.heldout] if s.heldout else [])
    paths = [Path(spec.partition(":")[2]) if ":" in spec else Path(spec) for spec in specs]
    return [p for p in paths if p.is_file()]


def task_items(spec: str, texts: list[str] | None, s: EvalSettings) -> tuple[list[Item], list[int]]:
    """The items of a built-in task (made from `texts`) or of a task file, and skipped lines."""
    if spec in BUILTIN_TASKS:
        if not texts:
            raise StageError(
                f"task {spec} is made from held-out text: pass --text FILE or set eval.heldout"
            )
        return BUILTIN_TASKS[spec](texts, s.max_items or 1000, s.seed), []
    if Path(spec.partition(":")[2] or spec).suffix or Path(spec).exists():
        items, skipped = load_items(spec)
        return _subsample(items, s.max_items, s.seed), skipped
    raise StageError(
        f"task {spec!r}: neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor a file"
    )


def task_result(
    model: torch.nn.Module, tok: Tokenizer, items: list[Item], s: EvalSettings
) -> dict[str, Any]:
    scores = score_items(model, tok, items, s.few_shot, s.seed, s.batch_size)
    n = len(items)
    k, k_norm = sum(scores.correct), sum(scores.correct_norm)
    return {
        "items": n,
        "acc": k / n,
        "acc_ci": list(wilson(k, n)),
        "acc_norm": k_norm / n,
        "acc_norm_ci": list(wilson(k_norm, n)),
        "chance": sum(1 / len(it.choices) for it in items) / n,
        "few_shot": s.few_shot,
        "correct": scores.correct,
        "correct_norm": scores.correct_norm,
        "item_ids": [it.id for it in items],
    }


def _encodable(items: list[Item], tok: Tokenizer, spec: str) -> tuple[list[Item], int]:
    """A character-level vocabulary cannot spell every text: such items are dropped, counted."""
    if getattr(tok, "kind", "bpe") != "char":
        return items, 0
    ok = []
    for item in items:
        try:
            tok.encode(item.context + "".join(item.delimiter + c for c in item.choices))
            ok.append(item)
        except StageError:
            pass
    if not ok:
        raise StageError(f"task {spec}: no item can be written in this character-level vocabulary")
    return ok, len(items) - len(ok)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tok: Tokenizer,
    s: EvalSettings,
    heldout: list[list[int]] | None = None,
    tasks: list[str] | None = None,
    train: TrainingText | str | None = None,
    template: ChatTemplate | None = None,
) -> dict[str, Any]:
    """Perplexity on `heldout` documents (token ids) and accuracy on each task; with `train`
    (the run's training text, or why it is not checked), which tasks' items it holds. Answer
    tasks (builtin:arithmetic...) are replied to, through `template` for a chat model."""
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {"settings": {k: v for k, v in vars(s).items()}}
    if heldout:
        ppl = perplexity(model, tok, heldout, s.stride, s.batch_size, s.max_tokens)
        stride = effective_stride(model.cfg.block_size, s.stride)
        result["perplexity"] = ppl.to_dict() | {"stride": stride}
    specs = tasks if tasks is not None else s.tasks
    answer_specs = [spec for spec in specs if spec.startswith(ANSWER_TASKS)]
    specs = [spec for spec in specs if spec not in answer_specs]
    if answer_specs:
        result["answers"] = {spec: answer_result(model, tok, template, spec, s) for spec in answer_specs}  # fmt: skip
    # only the built-in tasks read the held-out text: decode it only for them
    texts = (
        [tok.decode(d) for d in heldout] if heldout and set(specs) & set(BUILTIN_TASKS) else None
    )
    result["tasks"] = {}
    scored: dict[str, list[Item]] = {}
    for spec in specs:
        try:
            items, skipped = task_items(spec, texts, s)
        except NotEnoughText as e:  # the perplexity and the other tasks still stand
            result.setdefault("skipped_tasks", {})[spec] = str(e)
            continue
        items, unencodable = _encodable(items, tok, spec)
        scored[spec] = items
        result["tasks"][spec] = task_result(model, tok, items, s) | {
            "skipped_lines": len(skipped),
            "first_skipped": skipped[:10],
            "unencodable_items": unencodable,
        }
    if isinstance(train, TrainingText) and scored:
        result["overlap"] = overlap(scored, train, s.overlap_ngram)
    elif isinstance(train, str):
        result["overlap"] = {"skipped": train}
    model.train(was_training)
    return result


def answer_result(
    model: torch.nn.Module,
    tok: Tokenizer,
    template: ChatTemplate | None,
    spec: str,
    s: EvalSettings,
) -> dict[str, Any]:
    """pass@1 (greedy) on held-out problems, without the calculator and, for a model that
    has the tool tokens, with it (its replies may call the tool; the answer must be its own)."""
    tasks = builtin_tasks(spec, "heldout", s.max_items or HELDOUT_PROBLEMS, s.seed)
    modes = {"without tool": False}
    if template is not None and ToolUse.of(tok) is not None:
        modes["with tool"] = True
    out = {}
    for mode, tools in modes.items():
        system = (TOOLS_ON if tools else TOOLS_OFF) if template else ""
        scores = score_answers(model, tok, template, tasks, system=system, tools=tools)
        out[mode] = scores.summary()
    return out


def evaluate_path(
    path: Path,
    s: EvalSettings,
    tasks: list[str] | None = None,
    text: list[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a run or HF folder; held-out text from `text` files, eval.heldout or the
    pipeline's tokens beside the run."""
    if not path.is_dir():
        raise StageError(f"{path}: no such run folder")
    loaded = runs.load_model(path, device, s.quantize)
    model, tok = loaded.model, loaded.tokenizer
    sources = [Path(t) for t in text] if text else []
    if not sources and s.heldout:
        sources = [Path(s.heldout)]
    if not sources and (found := default_heldout(path)) is not None:
        sources = [found]
    docs = [d for src in sources for d in heldout_documents(src, tok)]
    train = training_text(path, s.train_data, tok)
    template = runs.saved_chat_template(path)
    result = evaluate(model, tok, s, docs or None, tasks, train, template)
    result["model"] = {
        "path": str(path),
        "checkpoint": loaded.checkpoint,
        "parameters": model.num_params(),
    }
    if docs:
        result["perplexity"]["source"] = [str(p) for p in sources]
    return result


# --------------------------------------------------------------------------- pretraining hook


def hook_tasks(s: EvalSettings, tokens_dir: Path, tok: Tokenizer) -> dict[str, list[Item]]:
    """The items the pretraining hook scores every eval.every_steps: made once, reused."""
    texts = None
    if any(spec in BUILTIN_TASKS for spec in s.tasks):
        texts = [tok.decode(d) for d in shard_documents(tokens_dir, tok)]
    specs = [spec for spec in s.tasks if not spec.startswith(ANSWER_TASKS)]  # generated: not here
    return {spec: task_items(spec, texts, s)[0] for spec in specs}


def hook_scores(
    model: torch.nn.Module, tok: Tokenizer, tasks: dict[str, list[Item]], s: EvalSettings
) -> dict[str, float]:
    """{"acc/<task>": accuracy} for the metrics log."""
    out = {}
    for name, items in tasks.items():
        scores = score_items(model, tok, items, s.few_shot, s.seed, s.batch_size)
        out[f"acc/{Path(name).stem if name not in BUILTIN_TASKS else name}"] = sum(scores.correct) / len(items)  # fmt: skip
    return out
