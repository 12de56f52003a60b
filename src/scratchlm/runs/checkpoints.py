"""A run's checkpoint folders: listing them, writing them whole (and sealed with checksums),
telling an intact one from a damaged one, and reading their weights."""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scratchlm.errors import StageError
from scratchlm.io import (
    atomic_dir,
    atomic_write_json,
    checksum_problems,
    file_checksums,
    remove_leftovers,
    save_safetensors,
)
from scratchlm.model.hf import read_hf
from scratchlm.model.lora import merge_into, read_lora, save_lora
from scratchlm.runs.kept import find_base
from scratchlm.runs.layout import (
    ADAPTER,
    BEST,
    CHECKPOINTS,
    CHECKSUMS,
    META,
    STATE,
    WEIGHTS,
    checkpoint_path,
    checkpoints,
    read_meta,
)

# --------------------------------------------------------------------------- checkpoints


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint was skipped because its files are not as they were written."""


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be used (meta.json missing or unreadable, a file missing or changed
    since it was written), or None. A checkpoint saved before checksums existed gets the
    checks its formats allow: a whole safetensors header, and state.pt's own zip CRCs."""
    try:
        meta = read_meta(ckpt)
    except FileNotFoundError:
        return f"it has no {META}"
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"its {META} is unreadable ({e})"
    step = int(ckpt.name.removeprefix("step_"))
    if not isinstance(meta, dict) or meta.get("step") != step:
        return f"its {META} does not describe step {step}"
    if CHECKSUMS in meta:
        problems = checksum_problems(ckpt, meta[CHECKSUMS])
        return "; ".join(problems) if problems else None
    return _format_problem(ckpt)


def _format_problem(ckpt: Path) -> str | None:
    """What the formats themselves can tell of a checkpoint saved before checksums existed:
    a safetensors header that fits the file, and state.pt's zip CRCs."""
    name = WEIGHTS
    try:
        if (ckpt / WEIGHTS).is_file():
            with safe_open(str(ckpt / WEIGHTS), "pt") as f:
                f.keys()
        name = STATE
        if has_training_state(ckpt) and (bad := zipfile.ZipFile(ckpt / STATE).testzip()):
            return f"{STATE} is damaged ({bad} fails its CRC)"
    except Exception as e:  # safetensors and zipfile raise several kinds for a damaged file
        return f"{name} is damaged ({e})"
    return None


def intact_checkpoint(
    run: Path,
    warn: Callable[[str], None] | None = None,
    usable: Callable[[Path], bool] | None = None,
) -> Path:
    """The newest checkpoint that is as it was written (and `usable`, when given); each newer
    one skipped is named with what is wrong in a warning (`warn`; default: warnings.warn)."""
    say = warn or (lambda text: warnings.warn(text, DamagedCheckpointWarning, stacklevel=3))
    for ckpt in reversed(checkpoints(run)):
        if usable is not None and not usable(ckpt):
            continue
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        say(f"skipped checkpoint {ckpt}: {problem}")
    if not checkpoints(run):
        raise StageError(f"{run} has no checkpoint: train it with `scratchlm pretrain` first")
    raise StageError(f"{run}: no intact checkpoint (what is wrong with each is said above)")


def clean_leftovers(run: Path) -> list[Path]:
    """Remove what writes killed midway left in the run folder and its checkpoints/ (temporary
    checkpoint folders, half-deleted ones, temporary files), except a live process's own."""
    return remove_leftovers(run) + remove_leftovers(run / CHECKPOINTS)


def write_meta(ckpt: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(ckpt / META, meta)


def write_best(run: Path, ckpt: Path, val_loss: float) -> None:
    atomic_write_json(run / CHECKPOINTS / BEST, {"checkpoint": ckpt.name, "val_loss": val_loss})


def has_training_state(ckpt: Path) -> bool:
    return (ckpt / STATE).is_file()


def read_training_state(ckpt: Path) -> dict[str, Any]:
    """state.pt: tensors, numbers and dicts only, so it loads with weights_only=True."""
    return torch.load(ckpt / STATE, map_location="cpu", weights_only=True)


def weights_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (safetensors refuses shared storage);
    a tied model re-ties on load because the tie lives in its config."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().cpu().contiguous()
    return state


def write_checkpoint_files(
    folder: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> None:
    """The files of a checkpoint, into a folder that is not yet published under its name."""
    save_safetensors({k: v.contiguous() for k, v in weights.items()}, folder / WEIGHTS)
    if state is not None:
        torch.save(state, folder / STATE)
    _write_sealed_meta(folder, {"step": step, **meta})


def _write_sealed_meta(folder: Path, meta: dict[str, Any]) -> None:
    """meta.json, written last, with the checksum of every other file in the folder."""
    sums = file_checksums(folder, skip={META})
    (folder / META).write_text(json.dumps({**meta, CHECKSUMS: sums}, indent=2))


def save_checkpoint(
    run: Path,
    step: int,
    model: torch.nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """checkpoints/step_NNNNNN: the weights, the training `state` if any, and `meta`,
    published as a whole."""
    path = checkpoint_path(run, step)
    with atomic_dir(path) as tmp:
        write_checkpoint_files(tmp, step, weights_for_saving(model), meta, state)
    return path


def save_adapter(
    run: Path,
    step: int,
    model: torch.nn.Module,
    meta: dict[str, Any],
    base: dict[str, str],
    base_prefix: str = "",
) -> Path:
    """A LoRA fine-tune, unmerged: the adapters and whatever else trained in full (a head, the
    rows of added tokens), and in meta.json the base whose weights they modify."""
    trained = {n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}
    also = {n: t for n, t in weights_for_saving(model).items() if n in trained}
    path = checkpoint_path(run, step)
    with atomic_dir(path) as tmp:
        save_lora(model, tmp / ADAPTER, also)
        _write_sealed_meta(tmp, {"step": step, "base": base | {"prefix": base_prefix}, **meta})
    return path


def checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full weights a checkpoint stands for: model.safetensors, or for an unmerged LoRA
    fine-tune its base's weights (a run's checkpoint or an HF folder) with the adapters merged."""
    if (ckpt / WEIGHTS).is_file():
        return load_file(str(ckpt / WEIGHTS))
    if not (ckpt / ADAPTER).is_file():
        raise StageError(f"{ckpt} holds no weights (no {WEIGHTS})")
    base = find_base(ckpt, read_meta(ckpt)["base"])
    if base["kind"] == "run":
        state = checkpoint_weights(Path(base["checkpoint"]))
    else:
        state = read_hf(base["path"])[1]
    state = {base.get("prefix", "") + k: v for k, v in state.items()}
    return merge_into(state, *read_lora(ckpt / ADAPTER))


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    state = checkpoint_weights(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    tied = names - {n for n, _ in model.named_parameters()}  # saved once, under the other name
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise StageError(
            f"{ckpt}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
