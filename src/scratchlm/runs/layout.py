"""The run folder's names, what a folder holds (our run, an HF model, a classifier), and its
config.yaml: the recipe the run was made with."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from scratchlm.config import Recipe
from scratchlm.errors import SettingsError, StageError
from scratchlm.io import (
    atomic_write_text,
    checksum_problems,
    file_checksums,
)
from scratchlm.model.config import ModelConfig
from scratchlm.settings import apply_overrides, build

CONFIG, TOKENIZER, METRICS, LABELS = "config.yaml", "tokenizer.json", "metrics.jsonl", "labels.json"
CHECKPOINTS, BEST = "checkpoints", "best.json"
WEIGHTS, ADAPTER, STATE, META = "model.safetensors", "adapter.safetensors", "state.pt", "meta.json"
CHECKSUMS = "checksums"  # meta.json's {file: sha256} of every other file of the checkpoint
__all__ = ["checksum_problems", "file_checksums"]  # also for the other owners of folders
HF_CONFIG = "config.json"  # what marks a Hugging Face model folder


# --------------------------------------------------------------------------- what a folder is


def is_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_hf_folder(path: str | Path) -> bool:
    return (Path(path) / HF_CONFIG).is_file()


def is_classifier(path: str | Path) -> bool:
    return (Path(path) / LABELS).is_file()


def require_model_folder(path: str | Path) -> Path:
    """`path` as a Path, or a clear error when it holds no model of either kind."""
    path = Path(path)
    if not is_run(path) and not is_hf_folder(path):
        raise StageError(
            f"{path} is not a run folder (no {CONFIG}; runs are in <work>/runs/<name>) "
            f"nor an HF model folder (no {HF_CONFIG})"
        )
    return path


# --------------------------------------------------------------------------- config.yaml


def write_config(run: Path, sections: Recipe | dict[str, Any]) -> None:
    """config.yaml: the whole recipe of a pretraining run, or the sections a fine-tune used."""
    data = sections.to_dict() if isinstance(sections, Recipe) else sections
    run.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(run / CONFIG, text)


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise StageError(f"{run} is not a run folder (no {CONFIG})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise StageError(f"{path} is damaged (not YAML: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise StageError(f"{path} is damaged (not a mapping of sections)")
    return data


def model_config(run: Path) -> ModelConfig:
    return build(ModelConfig, read_config(run)["model"], "model.")


def run_settings(
    path: str | Path, section: str, overrides: Sequence[str] = (), what: str = ""
) -> Any:
    """One section of the recipe a folder was made with, `--set` overrides applied. An HF
    folder, or a run made without that section (a fine-tune), gets the defaults."""
    path = require_model_folder(path)
    saved = read_config(path).get(section) if is_run(path) else None
    data = apply_overrides({section: saved or {}}, list(overrides))
    if other := sorted(set(data) - {section}):
        raise SettingsError(
            f"{what or 'this command'} takes {section}.* settings only, not {other[0]}.*"
        )
    settings_class = Recipe.__dataclass_fields__[section].default_factory  # type: ignore[misc]
    return build(settings_class, data[section], f"{section}.")


# --------------------------------------------------------------------------- step folders


def checkpoint_path(run: Path, step: int) -> Path:
    return run / CHECKPOINTS / f"step_{step:06d}"


def checkpoints(run: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    return sorted((run / CHECKPOINTS).glob("step_*[0-9]"))


def latest_checkpoint(run: Path) -> Path:
    ckpts = checkpoints(run)
    if not ckpts:
        raise StageError(f"{run} has no checkpoint: train it with `scratchlm pretrain` first")
    return ckpts[-1]


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / META).read_text())
