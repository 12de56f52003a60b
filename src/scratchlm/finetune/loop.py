"""The loop every fine-tuning task shares: AdamW on the trainable parameters, warmup then
cosine decay, gradient clipping, evaluation every N steps, metrics.jsonl, and the checkpoint.

A task supplies three functions: the loss of a batch, the batch for a step, and an evaluation.
Everything else (which parameters train, how often to evaluate, where things are written)
is decided here, once.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.device import autocast_for
from scratchlm.errors import StageError
from scratchlm.model.lora import apply_lora, lora_layers, merge_and_unwrap
from scratchlm.train.schedule import lr_multiplier

# Fine-tuning decays to a tenth of its peak rate (finetune.warmup_steps says so).
MIN_LR_RATIO = 0.1


def warmup_steps(total: int, s: FinetuneSettings) -> int:
    """finetune.warmup_steps, but at most a tenth of the run: a short run (a small file for a
    few epochs) would otherwise spend all its steps warming up and learn nothing."""
    return min(s.warmup_steps, total // 10)


def lr_at(step: int, total: int, s: FinetuneSettings) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO of finetune.lr (train/schedule.py)."""
    return s.lr * lr_multiplier(step, total, warmup_steps(total, s), MIN_LR_RATIO)


def total_steps(s: FinetuneSettings, examples: int) -> int:
    if s.max_steps:
        return s.max_steps
    return max(1, math.ceil(s.epochs * examples / s.batch_size))


class EpochBatches:
    """Which items form the batch of each step: every epoch shuffles all items by (seed,
    epoch), so a run is reproducible; the order is drawn once per epoch, not once per step."""

    def __init__(self, items: int, batch_size: int, seed: int):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.per_epoch = max(1, -(-items // batch_size))
        self._epoch, self._order = -1, list(range(items))

    def __call__(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._order = list(range(self.items))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order[k * self.batch_size : (k + 1) * self.batch_size]


def use_lora(model: nn.Module, s: FinetuneSettings, also_train: list[nn.Parameter]) -> list[str]:
    """Wrap the target linears with adapters (everything else frozen), then unfreeze
    `also_train` (a new head, or embedding rows for added tokens)."""
    names = apply_lora(model, s.lora_targets, s.lora_rank, s.lora_alpha)
    for p in also_train:
        p.requires_grad_(True)
    return names


def fit(
    model: nn.Module,
    steps: int,
    batch_for: Callable[[int], Any],
    loss_of: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    evaluate: Callable[[int], dict[str, Any]],
    s: FinetuneSettings,
    metrics_path: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    """Train for `steps` optimizer steps; return every evaluation (step 0 is the base model)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise StageError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr, betas=(0.9, 0.95))
    device = params[0].device  # autocast: bf16 on CUDA, float32 on CPU
    evaluations = []
    with metrics_path.open("a") as log:

        def write(record: dict[str, Any]) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()

        model.eval()
        with autocast_for(device):
            evaluations.append(evaluate(0))
        write({"step": 0, "eval": evaluations[-1]})
        bar = tqdm(range(steps), desc=f"finetune {s.task}", disable=not progress, leave=False)
        for step in bar:
            model.train()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, s)
            with autocast_for(device):
                loss, extra = loss_of(batch_for(step))
            if not torch.isfinite(loss):
                raise StageError(f"step {step + 1}: the loss is {loss.item()}; lower finetune.lr")
            loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            write(
                {"step": step + 1, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"]}
                | extra
            )
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step + 1) % s.eval_every == 0 or step + 1 == steps:
                model.eval()
                with autocast_for(device):
                    evaluations.append(evaluate(step + 1))
                write({"step": step + 1, "eval": evaluations[-1]})
    model.eval()
    return evaluations


def save_tuned(
    run_dir: Path,
    step: int,
    model: nn.Module,
    s: FinetuneSettings,
    source: dict[str, str],
    meta: dict[str, Any],
    base_prefix: str = "",
) -> Path:
    """The final checkpoint: full weights, or (LoRA without merge) the adapters and whatever
    else trained, with a pointer to the base weights they modify."""
    if not lora_layers(model) or s.merge:
        merge_and_unwrap(model)
        return runs.save_checkpoint(run_dir, step, model, meta)
    return runs.save_adapter(run_dir, step, model, meta, source, base_prefix)
