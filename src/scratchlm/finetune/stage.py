"""`scratchlm finetune {sft,classify,dpo}`: from a base model and a data file to a tuned run.

Each task's `run` (in sft.py, classify.py, dpo.py) reads its records, holds out validation
(and, for classify, test) examples, decides what trains (everything, the head, the last blocks,
or LoRA adapters), then hands loop.fit three functions: a batch, its loss, an evaluation.
The run folder is built under a temporary name and appears only when complete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from scratchlm.config import FinetuneSettings
from scratchlm.device import resolve_device, set_threads
from scratchlm.errors import StageError
from scratchlm.finetune import classify, dpo, sft
from scratchlm.finetune.base import load_base
from scratchlm.finetune.summaries import FinetuneSummary
from scratchlm.io import atomic_dir, atomic_write_json


def finetune(
    s: FinetuneSettings, base_path: str | Path, run_dir: str | Path, progress: bool = True
) -> FinetuneSummary:
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
    return summary


TASKS = {"sft": sft.run, "classify": classify.run, "dpo": dpo.run}
