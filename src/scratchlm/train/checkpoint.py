"""Checkpoints: weights in safetensors, training state beside them, written atomically.

    <run>/checkpoints/step_000600/model.safetensors   the weights (any tool can read them)
                                  state.pt            optimizer, data position, RNG states, step
                                  meta.json           step, validation loss, model config
A checkpoint folder is built under a temporary name and renamed when complete, so a
folder named step_* is always whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scratchlm.config import ModelConfig
from scratchlm.errors import StageError
from scratchlm.io import atomic_dir


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


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any] | None,
    meta: dict[str, Any],
) -> Path:
    """Write checkpoints/step_NNNNNN: weights, the training `state` (tensors, numbers and
    dicts only, so it loads with weights_only=True) and `meta`."""
    path = run_dir / "checkpoints" / f"step_{step:06d}"
    with atomic_dir(path) as tmp:
        save_file(weights_for_saving(model), str(tmp / "model.safetensors"))
        if state is not None:
            torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    return path


def latest_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))
    if not ckpts:
        raise StageError(f"{run_dir} has no checkpoint: train it with `scratchlm pretrain` first")
    return ckpts[-1]


def load_model_config(run_dir: Path) -> ModelConfig:
    import yaml

    from scratchlm.config import build

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise StageError(f"{run_dir} is not a run folder (no config.yaml)")
    return build(ModelConfig, yaml.safe_load(path.read_text())["model"], "model.")


def checkpoint_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full weights a checkpoint stands for. Usually model.safetensors; a LoRA fine-tune
    saved without merging holds adapter.safetensors instead, and meta.json names its base:
    the base's weights (read the same way, or from an HF folder) plus scale * B @ A."""
    if (ckpt / "model.safetensors").is_file():
        return load_file(str(ckpt / "model.safetensors"))
    if not (ckpt / "adapter.safetensors").is_file():
        raise StageError(f"{ckpt} holds no weights (no model.safetensors)")
    from safetensors import safe_open

    base = json.loads((ckpt / "meta.json").read_text())["base"]
    if base["kind"] == "run":
        state = checkpoint_state(Path(base["checkpoint"]))
    else:
        from scratchlm.export.hf import import_hf

        state = import_hf(base["path"])[1]
    state = {base.get("prefix", "") + k: v for k, v in state.items()}
    with safe_open(str(ckpt / "adapter.safetensors"), "pt") as f:  # one read: config and tensors
        lora = json.loads(f.metadata()["lora_config"])
        adapter = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    scale = lora["alpha"] / lora["rank"]
    for name, tensor in adapter.items():
        if name.endswith(".lora_a"):
            layer = name.removesuffix(".lora_a")
            b = adapter[f"{layer}.lora_b"]
            state[f"{layer}.weight"] = state[f"{layer}.weight"] + scale * (b @ tensor)
        elif not name.endswith(".lora_b"):  # trained in full beside the adapters (head, vocab)
            state[name] = tensor
    return state


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    state = checkpoint_state(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    tied = names - {n for n, _ in model.named_parameters()}  # saved once, under the other name
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise StageError(
            f"{ckpt}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )


def load_run(run_dir: Path, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The model of a run folder's latest checkpoint, in eval mode, and the run's tokenizer."""
    from scratchlm.model.gpt import GPT
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    model = GPT(load_model_config(run_dir))
    load_weights(model, latest_checkpoint(run_dir))
    return model.to(device).eval(), load_tokenizer(run_dir / "tokenizer.json")


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """A run folder of ours (config.yaml) or a Hugging Face GPT-2 / Llama folder (config.json,
    e.g. from `scratchlm export hf`), as (model in eval mode, tokenizer)."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return load_run(path, device)
    if (path / "config.json").is_file():
        from scratchlm.export.hf import import_hf
        from scratchlm.model.gpt import GPT
        from scratchlm.tokenizer.formats import import_tokenizer

        cfg, state = import_hf(path)
        model = GPT(cfg)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval(), import_tokenizer(path)
    raise StageError(
        f"{path} is not a run folder (no config.yaml) nor an HF model folder (no config.json)"
    )
