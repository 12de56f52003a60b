"""Optimisers and learning-rate schedules.

- AdamW with weight decay on matrices only (decaying gains and biases only hurts).
- Muon (Keller Jordan, as modded-nanogpt and nanochat use it) for the hidden weight matrices:
  momentum, then the update orthogonalised by a Newton-Schulz iteration, so every direction of
  the matrix moves by a similar amount. Embeddings, the LM head and 1-D parameters stay on AdamW.
- The schedule (schedule.py) is a multiplier of each group's peak rate.
"""

from __future__ import annotations

from typing import Any

import torch

from scratchlm.config import PretrainSettings
from scratchlm.train.schedule import lr_multiplier


def zeropower_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T (the nearest orthogonal matrix), by a quintic
    Newton-Schulz iteration whose coefficients maximise the slope at zero (from Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= 1, so the iteration converges
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised updates for 2-D weight matrices."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = zeropower_newton_schulz(update)
                # Scale so that tall and wide matrices move alike (RMS of the update ~ 0.2-ish).
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


class Optimizers:
    """Several optimisers stepped as one (AdamW alone, or Muon + AdamW)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        for opt in optimizers:
            for group in opt.param_groups:
                group["peak_lr"] = group["lr"]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr_scale(self, scale: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * scale

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): opt.state_dict() for i, opt in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore moments and step counts; hyperparameters (peak lr, betas, decay, momentum)
        stay as the current settings say, not as the checkpoint had them."""
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        for i, opt in enumerate(self.optimizers):
            opt.load_state_dict(state[str(i)])
        for group, hyper in zip(self.param_groups, settings, strict=True):
            group.update(hyper)


def _is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    return p.dim() == 2 and name.startswith("blocks.")


def _split_sharded(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Under tensor parallelism some parameters are DTensors and some (norms) plain tensors;
    the fused/foreach kernels take one kind per call, i.e. per group. Without DTensors: as is."""
    from torch.distributed.tensor import DTensor

    out = []
    for g in groups:
        plain = [p for p in g["params"] if not isinstance(p, DTensor)]
        sharded = [p for p in g["params"] if isinstance(p, DTensor)]
        out += [g | {"params": part} for part in (plain, sharded) if part]
    return out


def make_optimizer(model: torch.nn.Module, s: PretrainSettings, device: torch.device) -> Optimizers:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu") and torch.__version__ >= "2.4"
    adam_kwargs = dict(lr=s.lr, betas=(s.beta1, s.beta2), fused=fused)
    if s.optimizer == "muon":
        hidden = [p for n, p in params if _is_hidden_matrix(n, p)]
        rest = [(n, p) for n, p in params if not _is_hidden_matrix(n, p)]
        muon = Muon(hidden, lr=s.muon_lr, momentum=s.muon_momentum)
        params = rest
    groups = [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(_split_sharded(groups), **adam_kwargs)
    return Optimizers([muon, adamw] if s.optimizer == "muon" else [adamw])


def lr_scale(step: int, s: PretrainSettings) -> float:
    """The pretraining schedule's multiplier of the peak learning rate at `step` (0-based)."""
    return lr_multiplier(
        step, s.max_steps, s.warmup_steps, s.min_lr_ratio, s.schedule, s.decay_fraction
    )


def lr_at(step: int, s: PretrainSettings) -> float:
    """The AdamW learning rate at `step`."""
    return s.lr * lr_scale(step, s)
