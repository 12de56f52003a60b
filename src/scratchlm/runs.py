"""The run folder: its layout, and the one place that writes and reads what is in it.

    <run>/config.yaml               the exact effective recipe: reproduce or resume from it
          tokenizer.json            a copy, so the folder alone can generate text
          chat_template.json        chat runs (sft, dpo): how conversations become tokens
          labels.json               classification runs: class names in the head's order
          metrics.jsonl, *.png      what training measured
          checkpoints/step_NNNNNN/  model.safetensors    the weights (any tool reads them)
                                    adapter.safetensors  a LoRA fine-tune kept unmerged: the
                                                         adapters; meta.json names the base
                                    state.pt             training state (optimizer, data, RNG)
                                    meta.json            step, validation loss, model settings
          checkpoints/best.json     the checkpoint with the best validation loss

Training, fine-tuning, serving, evaluation and export call the functions here, and none of them
knows the layout. `load_model(path)` takes a run of ours or a Hugging Face GPT-2 / Llama folder
(nanochat's checkpoint_manager, litgpt's from_checkpoint). A checkpoint folder is built under a
temporary name and renamed when complete, so a folder named step_* is always whole.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from scratchlm.config import Recipe
from scratchlm.errors import SettingsError, StageError
from scratchlm.io import atomic_dir, atomic_write_json, atomic_write_text
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.heads import GPTClassifier
from scratchlm.model.hf import read_hf
from scratchlm.model.lora import merge_into, read_lora, save_lora
from scratchlm.model.quantize import quantize_int8
from scratchlm.settings import apply_overrides, build
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.formats import import_tokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer

CONFIG, TOKENIZER, METRICS, LABELS = "config.yaml", "tokenizer.json", "metrics.jsonl", "labels.json"
CHECKPOINTS, BEST = "checkpoints", "best.json"
WEIGHTS, ADAPTER, STATE, META = "model.safetensors", "adapter.safetensors", "state.pt", "meta.json"
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
    return yaml.safe_load(path.read_text()) or {}


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


# --------------------------------------------------------------------------- checkpoints


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
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / WEIGHTS))
    if state is not None:
        torch.save(state, folder / STATE)
    (folder / META).write_text(json.dumps({"step": step, **meta}, indent=2))


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
        full_meta = {"step": step, "base": base | {"prefix": base_prefix}, **meta}
        (tmp / META).write_text(json.dumps(full_meta, indent=2))
    return path


def checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full weights a checkpoint stands for: model.safetensors, or for an unmerged LoRA
    fine-tune its base's weights (a run's checkpoint or an HF folder) with the adapters merged."""
    if (ckpt / WEIGHTS).is_file():
        return load_file(str(ckpt / WEIGHTS))
    if not (ckpt / ADAPTER).is_file():
        raise StageError(f"{ckpt} holds no weights (no {WEIGHTS})")
    base = read_meta(ckpt)["base"]
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


# --------------------------------------------------------------------------- tokenizer, chat, labels


def save_tokenizer(run: Path, tokenizer: Tokenizer | Path) -> None:
    """The run's own copy of its tokenizer (an object, or a tokenizer.json to copy)."""
    run.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, Path):
        shutil.copyfile(tokenizer, run / TOKENIZER)
    else:
        tokenizer.save(run / TOKENIZER)


def saved_chat_template(path: str | Path) -> ChatTemplate | None:
    """The template a chat fine-tune saved (chat_template.json), if any."""
    return ChatTemplate.load(Path(path))


def chat_template(path: str | Path, tokenizer: Tokenizer) -> ChatTemplate | None:
    """The folder's saved template; else the default one when the tokenizer has its tokens."""
    saved = saved_chat_template(path)
    if saved is not None:
        return saved
    default = ChatTemplate()
    return default if all(t in tokenizer.special_tokens for t in default.tokens) else None


def save_chat_template(run: Path, template: ChatTemplate) -> None:
    template.save(run)


def save_labels(run: Path, labels: list[str]) -> None:
    atomic_write_json(run / LABELS, {"labels": labels})


# --------------------------------------------------------------------------- loading a model


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, and where it came from."""

    model: GPT
    tokenizer: Tokenizer
    source: dict[str, str]  # {"kind": "run", "checkpoint": ...} or {"kind": "hf", "path": ...}

    @property
    def checkpoint(self) -> str:
        """The checkpoint's name (step_NNNNNN), or "hf" for an HF folder."""
        return Path(self.source["checkpoint"]).name if self.source["kind"] == "run" else "hf"


def load_model(
    path: str | Path, device: str | torch.device = "cpu", quantize: str = "none"
) -> LoadedModel:
    """The latest checkpoint of a run folder of ours (config.yaml), or a Hugging Face GPT-2 /
    Llama folder (config.json, e.g. from `scratchlm export hf`), with its tokenizer.
    `quantize="int8"`: every linear layer as int8 weights (model/quantize.py), CPU only."""
    if quantize not in ("none", "int8"):
        raise SettingsError(f"quantize={quantize!r}: expected none or int8")
    if quantize == "int8" and torch.device(device).type != "cpu":
        raise SettingsError(
            f"quantize=int8 runs on the CPU; the device here is {device} (use float weights there)"
        )
    path = require_model_folder(path)
    if is_run(path):
        ckpt = latest_checkpoint(path)
        model = GPT(model_config(path))
        load_weights(model, ckpt)
        tokenizer: Tokenizer = load_tokenizer(path / TOKENIZER)
        source = {"kind": "run", "checkpoint": str(ckpt.resolve())}
    else:
        cfg, state = read_hf(path)
        model = GPT(cfg)
        model.load_state_dict(state, strict=True)
        tokenizer = import_tokenizer(path)
        source = {"kind": "hf", "path": str(path.resolve())}
    model = model.to(device).eval()
    if quantize == "int8":
        quantize_int8(model)
    return LoadedModel(model, tokenizer, source)


def load_classifier(run: str | Path) -> tuple[GPTClassifier, Tokenizer, list[str]]:
    """A classification run's model (eval mode), tokenizer and class names."""
    run = Path(run)
    if not is_classifier(run):
        raise StageError(f"{run} is not a classification run (no {LABELS})")
    names = json.loads((run / LABELS).read_text())["labels"]
    model = GPTClassifier(GPT(model_config(run)), len(names))
    load_weights(model, latest_checkpoint(run))
    return model.eval(), load_tokenizer(run / TOKENIZER), names
