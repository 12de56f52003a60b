"""What a training run measured: metrics.jsonl, the curves drawn from it, and optional mirrors.

    PretrainSummary what the run did, in a few numbers (the pipeline's manifest, the CLI)
    metrics.jsonl   one JSON object per step ({"step", "loss", "lr", ...}), per evaluation
                    ({"step", "val_loss", "acc/<task>"...}) and per sample ({"step", "sample"})
    loss.png        train and validation loss, redrawn at every evaluation
    tasks.png       task accuracies, when the eval.every_steps hook is on
    TensorBoard / W&B, when pretrain.loggers names them

Only rank 0 writes; the other ranks keep the history (for the summary) and write nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchlm import runs
from scratchlm.errors import StageError
from scratchlm.io import atomic_write_text
from scratchlm.train.plots import plot_losses, plot_scores

LOGGER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass
class PretrainSummary:
    """What `pretrain` did, for the pipeline's manifest and the CLI's summary line."""

    steps: int
    parameters: int
    tokens_seen: int
    initial_val_loss: float
    final_val_loss: float
    best_val_loss: float
    val_split: str
    skipped_batches: int
    seconds: float
    tokens_per_second: int
    checkpoint: str

    def headline(self) -> str:
        return (
            f"{self.parameters:,} params, val loss {self.initial_val_loss:.3f} -> "
            f"{self.final_val_loss:.3f}, {self.tokens_per_second:,} tok/s"
        )


def check_loggers(names: list[str]) -> None:
    """Refuse an unknown logger, or one whose package is missing, before training starts."""
    for name in names:
        module = LOGGER_MODULES.get(name)
        if module is None:
            raise StageError(
                f"pretrain.loggers: unknown logger {name!r}; choose from {', '.join(LOGGER_MODULES)}"
            )
        if importlib.util.find_spec(module) is None:
            raise StageError(
                f"pretrain.loggers has {name}, but the {module} package is not installed: pip install {module}"
            )


class MetricsLog:
    def __init__(self, run_dir: Path, main: bool, title: str, progress: bool):
        self.path = run_dir / runs.METRICS
        self.run_dir, self.main, self.title, self.progress = run_dir, main, title, progress
        self.history: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
        self._file: Any = None  # metrics.jsonl, open while training
        self._mirror: Any = None  # TensorBoard / W&B, while training

    def start(self) -> None:
        """A new run: an empty log."""
        if self.main:
            self.path.write_text("")

    def resume(self, step: int) -> float:
        """Keep the log up to `step` (what came after it is about to be redone), rebuild the
        history from it, and return the best validation loss it holds."""
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        records = [r for r in map(_record, lines) if r is not None and r["step"] <= step]
        if self.main:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        best = float("inf")
        for r in records:
            self._remember(r)
            if "val_loss" in r:  # a checkpoint is saved before its own evaluation
                best = min(best, r["val_loss"])
        return best

    @contextlib.contextmanager
    def open(self, mirrors: list[str], config: dict[str, Any]) -> Iterator[MetricsLog]:
        """Append to metrics.jsonl (and the `mirrors`) for the duration of training."""
        log = self.path if self.main else os.devnull
        mirrors = mirrors if self.main else []
        with open(log, "a") as self._file, self._mirrors(mirrors, config) as self._mirror:
            yield self
        self._file = self._mirror = None

    def record(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash loses at most the line being written
        self._remember(record)
        if self._mirror:
            self._mirror(record)

    def _remember(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            self.history["train"].append((record["step"], record["loss"]))
        if "val_loss" in record:
            self.history["val"].append((record["step"], record["val_loss"]))
        for key in (k for k in record if k.startswith("acc/")):
            self.history.setdefault(key, []).append((record["step"], record[key]))

    def say(self, text: str) -> None:
        """A line above the progress bar."""
        if self.progress:
            tqdm.write(f"pretrain: {text}")

    def plot(self) -> None:
        if not self.main:
            return
        plot_losses(self.history, self.run_dir / "loss.png", title=self.title)
        if scores := {k: v for k, v in self.history.items() if k.startswith("acc/")}:
            plot_scores(scores, self.run_dir / "tasks.png", title=self.title)

    @contextlib.contextmanager
    def _mirrors(self, names: list[str], config: dict[str, Any]) -> Iterator[Any]:
        writers, closers = [], []
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            writers.append(
                lambda r: [
                    tb.add_scalar(k, v, r["step"])
                    for k, v in r.items()
                    if k != "step" and isinstance(v, float)
                ]
            )
            closers.append(tb.close)
        if "wandb" in names:
            import wandb

            run = wandb.init(
                project="scratchlm", name=self.title, config=config, dir=str(self.run_dir)
            )
            writers.append(
                lambda r: run.log(
                    {k: v for k, v in r.items() if isinstance(v, float)}, step=r["step"]
                )
            )
            closers.append(run.finish)
        try:
            yield (lambda r: [w(r) for w in writers]) if writers else None
        finally:
            for close in closers:
                close()


def _record(line: str) -> dict[str, Any] | None:
    """One line of metrics.jsonl; None for a line a kill cut short (dropped on resume)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None
