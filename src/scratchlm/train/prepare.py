"""Before the first step: the run's settings completed and checked, and its folder written.

Nothing is written until every check has passed, so a refused run leaves no trace.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scratchlm import runs
from scratchlm.config import PretrainSettings, Recipe
from scratchlm.errors import StageError
from scratchlm.tokenizer.shards import load_meta
from scratchlm.tokenizer.tokenizer import load_tokenizer
from scratchlm.train.checkpointer import check_resumable


def prepare_run(
    recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path, write: bool = True
) -> Recipe:
    """Fill in the vocab size from the tokens; check that a run being resumed has the same
    model; then write config.yaml and the tokenizer copy (nothing is written if a check fails)."""
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
    if recipe.pretrain.resume == "auto" and runs.checkpoints(run_dir):
        check_resumable(run_dir, cfg)
    if write:  # on several processes, rank 0 alone writes
        runs.write_config(run_dir, recipe)
        runs.save_tokenizer(run_dir, tokenizer_path)
    return recipe


def grad_accum_steps(s: PretrainSettings, block_size: int, world: int = 1) -> int:
    if not s.tokens_per_step:
        return s.grad_accum
    per_micro = s.batch_size * block_size * world
    if s.tokens_per_step % per_micro:
        raise StageError(
            f"pretrain.tokens_per_step={s.tokens_per_step} is not a multiple of batch_size x block_size x "
            f"processes = {per_micro}"
        )
    return s.tokens_per_step // per_micro
