"""LoRA: train a low-rank update B @ A beside frozen weights, W x + (alpha / r) B A x.

    apply_lora(model, ["attn.qkv", "attn.proj"], rank=8, alpha=16)   wrap those linears, freeze the rest
    merge_lora(model) / unmerge_lora(model)                          fold B A into W and back
    save_lora(model, path) / load_lora(model, path)                  the adapters, as safetensors
    merge_into(base_state, *read_lora(path))                         the full weights they stand for

B starts at zero, so a freshly wrapped model computes exactly what it did before.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

from scratchlm.io import save_safetensors

DEFAULT_TARGETS = ("attn.qkv", "attn.proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises
        self.drop = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def _targets(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n.endswith(t) for t in targets)
    ]
    if not names:
        linears = sorted(
            {n.split(".", 2)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no linear layer matches {list(targets)}; layers are named like {linears}"
        )
    return names


def apply_lora(
    model: nn.Module,
    targets=DEFAULT_TARGETS,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `targets`; freeze everything else.
    Returns the wrapped names."""
    names = _targets(model, tuple(targets))
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    model.lora_config = {"targets": list(targets), "rank": rank, "alpha": alpha, "dropout": dropout}  # type: ignore[assignment]
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unwrap(model: nn.Module) -> None:
    """Fold the adapters into the weights and put plain nn.Linear layers back (for export)."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)


def save_lora(
    model: nn.Module, path: str | os.PathLike, also: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the adapters (and `also`: tensors trained in full beside them, such as a new head
    or the rows of added tokens) as one safetensors file, the LoRA settings in its metadata."""
    tensors = {}
    for name, layer in lora_layers(model).items():
        tensors[f"{name}.lora_a"] = layer.lora_a.detach().cpu().contiguous()
        tensors[f"{name}.lora_b"] = layer.lora_b.detach().cpu().contiguous()
    tensors |= also or {}
    save_safetensors(tensors, path, metadata={"lora_config": json.dumps(model.lora_config)})


def read_lora(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(LoRA settings, tensors) of an adapter file, in one read."""
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["lora_config"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    return config, tensors


def merge_into(
    state: dict[str, torch.Tensor], config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Base weights + (alpha / rank) B @ A for every adapted layer; tensors trained in full
    replace the base's. The full weights a LoRA fine-tune stands for."""
    state = dict(state)
    scale = config["alpha"] / config["rank"]
    for name, tensor in tensors.items():
        if name.endswith(".lora_a"):
            layer = name.removesuffix(".lora_a")
            b = tensors[f"{layer}.lora_b"]
            state[f"{layer}.weight"] = state[f"{layer}.weight"] + scale * (b @ tensor)
        elif not name.endswith(".lora_b"):
            state[name] = tensor
    return state


def load_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Wrap `model` as the saved adapters were, then load their weights."""
    config, tensors = read_lora(path)
    if not lora_layers(model):
        apply_lora(model, config["targets"], config["rank"], config["alpha"], config["dropout"])
    for name, layer in lora_layers(model).items():
        with torch.no_grad():
            layer.lora_a.copy_(tensors[f"{name}.lora_a"])
            layer.lora_b.copy_(tensors[f"{name}.lora_b"])
