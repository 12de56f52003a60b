"""A pretraining run's checkpoints: save, keep the right ones, and restore everything a step
depends on, so that a run killed at any moment and resumed ends with the same weights.

    resume_point(run)   the newest intact checkpoint (checksums verified; each newer damaged
                        one named in a warning), checked to hold this model and a training state
    save(step, ...)     weights (model.safetensors), optimizer + data position + RNG states +
                        step (state.pt) and meta.json; on several processes through DCP
                        (sharded_checkpoint.py), with the whole weights beside the shards
    prune()             the last `keep_last` checkpoints and the best by validation loss stay
    restore(...)        weights and optimizer state into the model, whatever its layout

The folder layout belongs to runs/; this module decides what a training checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scratchlm import runs
from scratchlm.errors import StageError
from scratchlm.io import remove_dir
from scratchlm.model.config import ModelConfig
from scratchlm.train.distributed import Dist
from scratchlm.train.optim import Optimizers
from scratchlm.train.sharded_checkpoint import (
    full_optimizer_state,
    is_sharded,
    load_sharded,
    save_sharded,
)


def resume_point(run_dir: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint to resume from: the newest intact one (None when there is none at all)."""
    return runs.intact_checkpoint(run_dir, warn) if runs.checkpoints(run_dir) else None


def check_resumable(ckpt: Path, cfg: ModelConfig) -> None:
    """The checkpoint must hold the same model and a training state."""
    if runs.read_meta(ckpt).get("model") != dataclasses.asdict(cfg):
        raise StageError(
            f"{ckpt} was trained with other model settings; resume needs the same model.*"
        )
    if not runs.has_training_state(ckpt):
        raise StageError(
            f"{ckpt} holds weights only (an imported model?), no training state to resume"
        )


class Checkpointer:
    def __init__(
        self,
        run_dir: Path,
        dist: Dist,
        keep_last: int,
        resume_from: Path | None = None,
        trust_pickled: bool = False,
    ):
        self.run_dir, self.dist, self.keep_last = run_dir, dist, keep_last
        self.trust_pickled = trust_pickled  # pretrain.trust_pickled_checkpoints
        self.last = resume_from  # the newest good checkpoint: resumed from, or saved since

    def latest(self) -> Path:
        if self.last is None:
            raise StageError(f"{self.run_dir}: no checkpoint saved yet")
        return self.last

    def describe_latest(self) -> str:
        """The newest good checkpoint's path, or "none yet" (for messages)."""
        return str(self.last) if self.last is not None else "none yet"

    # ------------------------------------------------------------------ saving

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Optimizers,
        state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        if self.dist.enabled:
            meta = meta | {"parallel": {"strategy": self.dist.strategy, "world": self.dist.world}}
            path = save_sharded(
                self.dist, self.run_dir, step, model, optimizer.optimizers, state, meta
            )
        else:
            state = state | {"optimizer": optimizer.state_dict()}
            path = runs.save_checkpoint(self.run_dir, step, model, meta, state)
        self.last = path
        self.prune()
        return path

    def annotate(self, ckpt: Path, val_loss: float) -> None:
        """Add the validation loss, measured after saving, to the checkpoint's meta."""
        if not self.dist.main:
            return
        runs.write_meta(ckpt, runs.read_meta(ckpt) | {"val_loss": val_loss})
        self.prune()

    def prune(self) -> None:
        """Keep the last `keep_last` checkpoints and the one with the best validation loss."""
        if not self.dist.main:
            return
        ckpts = runs.checkpoints(self.run_dir)
        best, best_loss = None, math.inf
        for c in ckpts:
            loss = _val_loss(c)
            if loss is not None and loss < best_loss:
                best, best_loss = c, loss
        for c in ckpts[: -self.keep_last]:
            if c not in (best, self.last):
                remove_dir(c)
        if best is not None:
            runs.write_best(self.run_dir, best, best_loss)

    # ------------------------------------------------------------------ restoring

    def restore(self, model: torch.nn.Module, optimizer: Optimizers) -> dict[str, Any]:
        """Weights and optimizer state of the latest checkpoint into the (parallelized) model;
        returns the rest of the training state (data position, RNG, step, best loss)."""
        ckpt = self.latest()
        state = runs.read_training_state(ckpt)
        if is_sharded(ckpt):
            load_sharded(ckpt, model, optimizer.optimizers, self.dist.strategy, self.trust_pickled)
        elif not self.dist.enabled:  # on several processes: done by full_state_for_ranks
            runs.load_weights(model, ckpt)
            optimizer.load_state_dict(state["optimizer"])
        return state

    def full_state_for_ranks(
        self, model: torch.nn.Module, make_optimizer: Callable[[], Optimizers]
    ) -> dict[str, Any] | None:
        """Resuming a single-process checkpoint on several processes: whole weights into the
        model before it is split, and the optimizer state in the name-keyed full form (None
        when the checkpoint is sharded: `restore` loads it)."""
        ckpt = self.latest()
        if is_sharded(ckpt):
            return None
        if self.dist.strategy in ("tp", "fsdp+tp"):
            raise StageError(
                f"{ckpt} is a single-process checkpoint; tp and fsdp+tp resume only their own "
                "(sharded) checkpoints: resume it with parallel.strategy ddp or fsdp"
            )
        runs.load_weights(model, ckpt)
        saved = runs.read_training_state(ckpt)["optimizer"]
        return full_optimizer_state(model, make_optimizer().optimizers, saved)


def _val_loss(ckpt: Path) -> float | None:
    """The checkpoint's validation loss, or None (not measured, or its meta.json is gone: what
    an older kill during pruning could leave)."""
    try:
        loss = runs.read_meta(ckpt).get("val_loss")
    except (OSError, ValueError, AttributeError):
        return None
    return loss if isinstance(loss, (int, float)) else None
