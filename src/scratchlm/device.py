"""Where a model runs: the device a setting names, its dtype and autocast, batches copied to
it, its random-number state, and CPU threads.

Every stage that runs a model (pretraining, fine-tuning, generation, evaluation) goes through
these, so CPU, CUDA and MPS behave the same everywhere.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from scratchlm.errors import StageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """The torch device for `name` (auto, cpu, cuda, mps). `setting` is where the value came
    from (e.g. "pretrain.device", "eval --device"), so an error names what to change."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError(f"{setting}=cuda but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise StageError(f"{setting}=mps but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise StageError(f"{setting}={name!r}: expected one of auto, cpu, cuda, mps")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, setting: str = "dtype") -> torch.dtype:
    """The weights' dtype for inference: `name` (float32, bfloat16, float16), or for auto
    bfloat16 on a GPU that has it (half the bytes to read per token) and float32 elsewhere
    (CPUs multiply bf16 slowly)."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPES:
        raise StageError(f"{setting}={name!r}: expected one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA (no loss scaling needed); float32 on CPU, where bf16 matmuls are slow."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`. To a GPU it goes from pinned memory without blocking: a
    blocking copy (`.to(device)`) returns only once the GPU has finished all the work queued
    before it, a stall per micro-batch where the CPU could be queueing the next one."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random-number state a training step draws from (dropout): the CPU generator's
    and, on a GPU, that one GPU's. Not `get_rng_state_all`, which would wake every GPU of
    the machine in every process of a torchrun job (a CUDA context, ~0.5 GB, on each)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved; a GPU state (if any) goes to `device`."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, list | tuple):  # older checkpoints held every GPU's state
            cuda = cuda[min(device.index or 0, len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda, device)


def set_threads(threads: int) -> None:
    """torch's CPU threads: `threads`, or every core for 0."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
