"""Before the first step: the run's settings completed and checked, and its folder written.

Nothing is written until every check has passed, so a refused run leaves no trace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from scratchlm import runs
from scratchlm.config import PretrainSettings, Recipe
from scratchlm.errors import StageError
from scratchlm.tokenizer.shards import load_meta
from scratchlm.tokenizer.tokenizer import load_tokenizer
from scratchlm.train.checkpointer import check_resumable, resume_point


def prepare_run(
    recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path, write: bool = True
) -> tuple[Recipe, Path | None]:
    """Fill in the vocab size from the tokens; pick the checkpoint to resume from (the newest
    intact one) and check that it has the same model; then write config.yaml and the tokenizer
    copy (nothing is written if a check fails). Returns the recipe and that checkpoint.
    `write` is False on all ranks but rank 0: they neither write nor warn."""
    meta = load_meta(tokens_dir)
    cfg = recipe.model
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=meta["vocab_size"])
    elif cfg.vocab_size < meta["vocab_size"]:
        raise StageError(
            f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {meta['vocab_size']}"
        )
    recipe = dataclasses.replace(recipe, model=cfg)
    if meta.get("tokenizer") != load_tokenizer(tokenizer_path).fingerprint():
        raise StageError(
            f"{tokens_dir} was made with another tokenizer than {tokenizer_path}: run `scratchlm tokenize` again"
        )
    resume_from = None
    if recipe.pretrain.resume == "auto":
        resume_from = resume_point(run_dir, None if write else (lambda text: None))
    if resume_from is not None:
        check_resumable(resume_from, cfg)
    if write:  # on several processes, rank 0 alone writes
        runs.clean_leftovers(run_dir)  # what a kill during a save (or a pruning) left behind
        runs.write_config(run_dir, recipe)
        runs.save_tokenizer(run_dir, tokenizer_path)
    return recipe, resume_from


def grad_accum_steps(
    s: PretrainSettings,
    block_size: int,
    world: int = 1,
    resume_from: Path | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Micro-batches per optimizer step: `grad_accum`, or what makes `tokens_per_step`; a run
    resumed on another number of processes keeps its checkpoint's global batch."""
    if resume_from is not None and not s.tokens_per_step:
        accum = resumed_grad_accum(s, world, resume_from, runs.read_meta(resume_from))
        if accum != s.grad_accum:
            say(
                f"{world} data-parallel process(es): pretrain.grad_accum {s.grad_accum} -> "
                f"{accum} keeps the global batch of {resume_from}"
            )
        return accum
    if not s.tokens_per_step:
        return s.grad_accum
    per_micro = s.batch_size * block_size * world
    if s.tokens_per_step % per_micro:
        raise StageError(
            f"pretrain.tokens_per_step={s.tokens_per_step} is not a multiple of batch_size x block_size x "
            f"processes = {per_micro}"
        )
    return s.tokens_per_step // per_micro


def global_batch_meta(s: PretrainSettings, grad_accum: int, dp_world: int) -> dict[str, int]:
    """What a checkpoint records of its batch: sequences per optimizer step, and over how many
    data-parallel processes they were spread."""
    return {"global_batch": s.batch_size * grad_accum * dp_world, "data_parallel": dp_world}


def resumed_grad_accum(s: PretrainSettings, dp_world: int, ckpt: Path, meta: dict) -> int:
    """`grad_accum` for a run resumed on another number of processes than its checkpoint's:
    the global batch stays what it was (a fixed grad_accum would scale it with the processes)."""
    saved, saved_world = meta.get("global_batch"), meta.get("data_parallel")
    if saved is None or saved_world in (None, dp_world):
        return s.grad_accum
    per_micro = s.batch_size * dp_world
    if saved % per_micro:
        raise StageError(
            f"{ckpt} was trained with {saved} sequences per step on {saved_world} process(es); "
            f"{dp_world} process(es) x pretrain.batch_size={s.batch_size} cannot make that: "
            "choose a batch_size that divides it, or set pretrain.tokens_per_step"
        )
    return saved // per_micro
