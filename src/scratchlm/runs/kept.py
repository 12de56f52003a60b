"""Runs kept aside: a re-run renames the run it replaces NAME.YYYYMMDD-HHMMSS instead of
deleting it, and a LoRA run finds the base it was trained on among them by checksum."""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from pathlib import Path

from scratchlm.errors import StageError
from scratchlm.io import (
    file_sha256,
    json_sha256,
)
from scratchlm.runs.layout import ADAPTER, CHECKPOINTS, WEIGHTS, checkpoints, is_run

# --------------------------------------------------------------------------- kept runs, bases

KEPT = re.compile(r"(?P<name>.+)\.\d{8}-\d{6}(-\d+)?")  # NAME.YYYYMMDD-HHMMSS[-N]


def keep_aside(run: Path) -> Path | None:
    """Make room for training `run` again from scratch without losing what it holds: a run
    with a checkpoint is renamed NAME.<time of its last checkpoint> beside it (returned); an
    attempt that never saved one is removed. A folder that is not a run is left alone."""
    if not run.exists():
        return None
    ckpts = checkpoints(run)
    if not ckpts:
        if is_run(run) or not any(run.iterdir()):
            shutil.rmtree(run)
            return None
        raise StageError(f"{run} exists and is not a run folder: choose another name for the run")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(ckpts[-1].stat().st_mtime))
    kept, n = run.with_name(f"{run.name}.{stamp}"), 1
    while kept.exists():
        n += 1
        kept = run.with_name(f"{run.name}.{stamp}-{n}")
    os.replace(run, kept)
    return kept


def kept_runs(run: Path) -> list[Path]:
    """The runs that re-runs kept beside `run`, newest first."""
    found = run.parent.glob(f"{glob.escape(run.name)}.*")
    kept = [p for p in found if (m := KEPT.fullmatch(p.name)) and m["name"] == run.name]
    return sorted(kept, reverse=True)


def swap_in(kept: Path, run: Path) -> Path | None:
    """Put the kept run `kept` back under the name `run`; what is there is kept aside."""
    aside = keep_aside(run)
    os.replace(kept, run)
    return aside


def weights_sha256(source: dict[str, str]) -> str:
    """A checksum of the weight files a model source stands for: a checkpoint's
    model.safetensors (or adapter.safetensors), an HF folder's weight files."""
    if source["kind"] == "run":
        ckpt = Path(source["checkpoint"])
        files = [ckpt / (WEIGHTS if (ckpt / WEIGHTS).is_file() else ADAPTER)]
    else:
        folder = Path(source["path"])
        files = sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")])
    return json_sha256({f.name: file_sha256(f) for f in files})


def find_base(ckpt: Path, base: dict[str, str]) -> dict[str, str]:
    """The base an adapter checkpoint was trained on, with the weights it was trained on:
    where meta.json says, or the copy kept beside it when that run was trained again since."""
    if "sha256" not in base:  # saved before bases had checksums: taken as it is
        return base
    candidates = [base]
    if base["kind"] == "run":
        where = Path(base["checkpoint"])
        for kept in kept_runs(where.parent.parent):
            candidates.append(base | {"checkpoint": str(kept / CHECKPOINTS / where.name)})
    for candidate in candidates:
        try:
            if weights_sha256(candidate) == base["sha256"]:
                return candidate
        except OSError:  # gone
            continue
    raise StageError(
        f"{ckpt}: these adapters were trained on {base.get('checkpoint') or base.get('path')}, "
        "whose weights have changed or gone since (checksum mismatch), and no kept copy of it "
        "matches: fine-tune again from the base as it is now"
    )
