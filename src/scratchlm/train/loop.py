"""The pretraining loop: next-token prediction on token shards, AdamW, warmup + cosine.

Run folder:
    config.yaml        the exact effective recipe (vocab size filled in): reproduce from it
    tokenizer.json     a copy, so the run folder alone can generate text
    metrics.jsonl      one JSON object per logged step / evaluation
    checkpoints/       step_NNNNNN/ folders (see checkpoint.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scratchlm.config import PretrainSettings, Recipe
from scratchlm.errors import StageError
from scratchlm.io import atomic_write_text
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.shards import load_meta
from scratchlm.train.checkpoint import save_checkpoint
from scratchlm.train.data import TokenData
from scratchlm.train.optim import lr_at, make_optimizer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("pretrain.device=cuda but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise StageError("pretrain.device=mps but MPS is not available")
    return torch.device(name)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 on CUDA (no loss scaling needed); float32 on CPU, where bf16 matmuls are slow.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def prepare_run(recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path) -> Recipe:
    """Fill in the vocab size from the tokens, write config.yaml and the tokenizer copy."""
    meta = load_meta(tokens_dir)
    cfg = recipe.model
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=meta["vocab_size"])
    elif cfg.vocab_size < meta["vocab_size"]:
        raise StageError(
            f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {meta['vocab_size']}"
        )
    recipe = dataclasses.replace(recipe, model=cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
    shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
    return recipe


@torch.no_grad()
def evaluate(
    model: GPT, data: TokenData, batches: int, batch_size: int, seed: int, device: torch.device
) -> float:
    """Mean loss over the same `batches` windows every time (a fixed generator seed)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = data.batch(batch_size, gen)
        with autocast_for(device):
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
    model.train(was_training)
    return total / batches


def train_step(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    data: TokenData,
    gen: torch.Generator,
    s: PretrainSettings,
    lr: float,
    device: torch.device,
) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the mean training loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    train_loss = 0.0
    for _ in range(s.grad_accum):
        x, y = data.batch(s.batch_size, gen)
        with autocast_for(device):
            _, loss = model(x.to(device), y.to(device))
        (loss / s.grad_accum).backward()  # the mean over micro-batches = the big batch's loss
        train_loss += loss.item() / s.grad_accum
    if not math.isfinite(train_loss):
        raise StageError(
            f"pretrain: the loss became {train_loss}; lower pretrain.lr or raise warmup_steps"
        )
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return train_loss


def pretrain(
    recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train a model from scratch on `tokens_dir`; return a summary of the run."""
    s = recipe.pretrain
    recipe = prepare_run(recipe, tokens_dir, tokenizer_path, run_dir)
    cfg = recipe.model
    meta = load_meta(tokens_dir)
    device = resolve_device(s.device)
    set_threads(s.threads)
    torch.manual_seed(s.seed)

    train = TokenData(tokens_dir, "train", meta["files"]["train"], meta["dtype"], cfg.block_size)
    val_split = "val" if meta["files"]["val"] else "train"
    val = TokenData(tokens_dir, val_split, meta["files"][val_split], meta["dtype"], cfg.block_size)

    model = GPT(cfg).to(device)
    optimizer = make_optimizer(model, s, device)
    gen = torch.Generator().manual_seed(s.seed)
    tokens_per_step = s.batch_size * s.grad_accum * cfg.block_size

    def eval_now() -> float:
        return evaluate(model, val, s.eval_batches, s.batch_size, s.seed + 1, device)

    start = time.time()
    val_losses: list[float] = []
    with (
        open(run_dir / "metrics.jsonl", "w") as metrics,
        tqdm(range(s.max_steps), desc="pretrain", unit="step", disable=not progress) as bar,
    ):

        def log(record: dict[str, Any]) -> None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

        for step in bar:
            if step % s.eval_every == 0:
                val_losses.append(eval_now())
                log({"step": step, "val_loss": val_losses[-1], "time": time.time() - start})
            lr = lr_at(step, s)
            step_start = time.time()
            train_loss = train_step(model, optimizer, train, gen, s, lr, device)
            tok_s = tokens_per_step / max(time.time() - step_start, 1e-9)
            bar.set_postfix(
                loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False
            )
            log({"step": step + 1, "loss": train_loss, "lr": lr, "tokens_per_second": tok_s})
        val_losses.append(eval_now())
        log({"step": s.max_steps, "val_loss": val_losses[-1], "time": time.time() - start})

    seconds = time.time() - start
    summary = {
        "steps": s.max_steps,
        "parameters": model.num_params(),
        "tokens_seen": tokens_per_step * s.max_steps,
        "initial_val_loss": round(val_losses[0], 4),
        "final_val_loss": round(val_losses[-1], 4),
        "val_split": val_split,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens_per_step * s.max_steps / seconds),
    }
    ckpt = save_checkpoint(
        run_dir,
        s.max_steps,
        model,
        optimizer,
        {"val_loss": val_losses[-1], "model": dataclasses.asdict(cfg)},
    )
    summary["checkpoint"] = str(ckpt)
    return summary
