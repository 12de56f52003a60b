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
from scratchlm.train.distributed import split_matrices
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
    """Momentum + orthogonalised updates for 2-D weight matrices.

    `matrices` groups the parameters that are one matrix on one device (tensor parallelism
    holds attention's q|k|v and SwiGLU's gate|up as separate Linears): they are
    orthogonalised together, so every layout takes the steps one process takes.

    Sharded parameters (FSDP, tensor parallel: DTensors) are orthogonalised whole: each rank
    gathers the full update of a matrix (one all-gather, what FSDP's forward already pays per
    block), runs Newton-Schulz on it and keeps its own shard. Every rank repeats the same
    Newton-Schulz work; nanochat's DistMuon instead spreads the matrices over the ranks and
    all-gathers the results, which saves compute at many ranks but is more code. At the sizes
    this project trains, the gather is the cost that matters, and it is the same either way.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        matrices: list[list[torch.Tensor]] | None = None,
    ):
        params = list(params)
        super().__init__(
            params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        )
        self.matrices = matrices or [[p] for p in params]

    def _momentum_update(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        return p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        from torch.distributed.tensor import DTensor, distribute_tensor

        group = self.param_groups[0]
        for parts in self.matrices:
            if any(p.grad is None for p in parts):
                continue
            updates = [self._momentum_update(p, group) for p in parts]
            if len(parts) == 1 and not isinstance(parts[0], DTensor):  # a whole local matrix
                ortho = [zeropower_newton_schulz(updates[0])]
            else:
                whole = torch.cat([_full(u) for u in updates], dim=0)
                pieces = zeropower_newton_schulz(whole).split([p.size(0) for p in parts])
                # Every rank holds the same whole result: each keeps its shard, no traffic.
                ortho = [
                    distribute_tensor(x, p.device_mesh, p.placements, src_data_rank=None)
                    if isinstance(p, DTensor)
                    else x
                    for x, p in zip(pieces, parts, strict=True)
                ]
            # Scale so that tall and wide matrices move alike (RMS of the update ~ 0.2-ish).
            scale = max(1.0, sum(p.size(0) for p in parts) / parts[0].size(1)) ** 0.5
            for p, update in zip(parts, ortho, strict=True):
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor's shards gathered from every rank, a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
        joined = split_matrices(model)  # empty on one device
        in_joined = {id(p) for parts in joined for p in parts}
        matrices = joined + [[p] for p in hidden if id(p) not in in_joined]
        muon = Muon(
            [p for parts in matrices for p in parts],
            lr=s.muon_lr,
            momentum=s.muon_momentum,
            matrices=matrices,
        )
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
