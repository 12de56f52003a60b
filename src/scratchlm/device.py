"""Where a model runs: the device a setting names, its autocast, and CPU threads.

Every stage that runs a model (pretraining, fine-tuning, generation, evaluation) goes through
these, so CPU, CUDA and MPS behave the same everywhere.
"""

from __future__ import annotations

import contextlib
import os

import torch

from scratchlm.errors import StageError


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


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA (no loss scaling needed); float32 on CPU, where bf16 matmuls are slow."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    """torch's CPU threads: `threads`, or every core for 0."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
