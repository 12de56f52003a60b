"""`scratchlm finetune {sft,classify,dpo}`: from a base model and a data file to a tuned run.

Each task's `run` (in sft.py, classify.py, dpo.py) reads its records, holds out validation
(and, for classify, test) examples, decides what trains (everything, the head, the last blocks,
or LoRA adapters), then hands loop.fit three functions: a batch, its loss, an evaluation.
The run folder is built under a temporary name and appears only when complete; a run that was
there is then kept beside it (NAME.YYYYMMDD-HHMMSS), never deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.device import resolve_device, set_threads
from scratchlm.errors import StageError
from scratchlm.finetune import classify, dpo, grpo, sft
from scratchlm.finetune.base import load_base
from scratchlm.finetune.summaries import FinetuneSummary
from scratchlm.io import atomic_dir, atomic_write_json


def finetune(
    s: FinetuneSettings,
    base_path: str | Path,
    run_dir: str | Path,
    progress: bool = True,
    on_kept: Callable[[Path], None] | None = None,
) -> FinetuneSummary:
    """Fine-tune the model in `base_path` into the run folder `run_dir`. A run already there
    is kept beside the new one (runs.keep_aside; `on_kept` hears where), and only once the new
    one is complete: a fine-tune that fails leaves everything as it was."""
    if not s.data:
        raise StageError(
            "finetune.data is not set: give a .jsonl/.json/.csv file or a builtin: set"
        )
    device = resolve_device(s.device, "finetune.device")
    set_threads(s.threads)
    base = load_base(base_path)
    with atomic_dir(Path(run_dir)) as out:
        torch.manual_seed(s.seed)
        summary = TASKS[s.task](s, base, out, device, progress)
        atomic_write_json(out / "summary.json", dataclasses.asdict(summary))
        kept = runs.keep_aside(Path(run_dir))
        if kept and on_kept:
            on_kept(kept)
    return summary


TASKS = {"sft": sft.run, "classify": classify.run, "dpo": dpo.run, "grpo": grpo.run}
