"""Loading what a folder holds (a run of ours or an HF model, with its tokenizer; a
classifier), the files beside the weights, and runs kept aside by a re-run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm.errors import SettingsError, StageError
from scratchlm.io import (
    atomic_write_json,
)
from scratchlm.model.gpt import GPT
from scratchlm.model.heads import GPTClassifier
from scratchlm.model.hf import read_hf
from scratchlm.model.quantize import quantize_int8
from scratchlm.runs.checkpoints import intact_checkpoint, load_weights
from scratchlm.runs.layout import (
    LABELS,
    TOKENIZER,
    is_classifier,
    is_run,
    model_config,
    require_model_folder,
)
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.formats import import_tokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer

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
        ckpt = intact_checkpoint(path)
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
    load_weights(model, intact_checkpoint(run))
    return model.eval(), load_tokenizer(run / TOKENIZER), names
