"""Training on several processes: torchrun's environment, the device mesh, and
`parallelize(model, dist, settings)`, which applies DDP, FSDP2, tensor parallelism and
activation checkpointing to a model written for one device (the torchtitan split: model/
never imports torch.distributed).

    ddp      every rank holds the whole model; gradients are averaged by all-reduce
    fsdp     every rank holds 1/N of each parameter, gradient and optimizer state (FSDP2)
    tp       each matrix is split across ranks (DTensor); every rank sees the same batch
    fsdp+tp  a 2-D mesh (dp x tp): tensor parallel inside a group, fully sharded across groups

Without torchrun (no RANK / WORLD_SIZE in the environment) nothing here starts: one process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from scratchlm.config import ModelConfig, ParallelSettings, PretrainSettings
from scratchlm.errors import SettingsError


def launched() -> bool:
    """True under torchrun (or any launcher that sets the env:// rendezvous variables)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that prints and writes files. Readable before
    the process group exists, because torchrun puts the rank in the environment."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Dist:
    """Where this process stands: its rank, the world, and its share of the data."""

    rank: int = 0
    world: int = 1
    strategy: str = "none"
    mesh: Any = None  # DeviceMesh: ("dp",), ("tp",) or ("dp", "tp")
    dp_rank: int = 0  # which slice of each global batch this rank reads
    dp_world: int = 1  # how many different slices there are

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters are DTensors (fsdp, tp): checkpoints go through DCP per rank."""
        return self.strategy in ("fsdp", "tp", "fsdp+tp")


def tp_degree(p: ParallelSettings, world: int) -> int:
    """Processes per tensor-parallel group: all of them under tp, tp_size under fsdp+tp."""
    if p.strategy == "tp":
        return world
    return p.tp_size if p.strategy == "fsdp+tp" else 1


def check_settings(
    p: ParallelSettings, cfg: ModelConfig, s: PretrainSettings, world: int, device: str = "cpu"
) -> None:
    """Refuse a layout that cannot work, before any process group or model exists: one
    error that lists every problem (so they are fixed in one go, not one per attempt)."""
    if world <= 1:
        return
    problems = []
    if p.cpu_offload and (p.strategy not in ("fsdp", "fsdp+tp") or device == "cpu"):
        # FSDP2's CPUOffloadPolicy moves shards to the accelerator for compute; without one,
        # fully_shard fails ("Cannot access accelerator device when none is available").
        problems.append(
            f"parallel.cpu_offload=true needs strategy fsdp or fsdp+tp on a GPU "
            f"(here: {p.strategy} on {device}); on CPU the shards are in CPU memory already"
        )
    tp = tp_degree(p, world)
    if p.strategy == "fsdp+tp" and (tp < 1 or world % tp):
        problems.append(
            f"parallel.tp_size={p.tp_size}: strategy fsdp+tp needs a tp_size >= 1 that divides "
            f"the {world} processes"
        )
    elif tp > 1:
        sizes = [("model.n_head", cfg.n_head), ("model.n_kv_head", cfg.kv_heads)]
        sizes.append((f"the MLP width (model.mlp_hidden, {cfg.mlp})", cfg.hidden))
        for key, value in sizes:
            if value % tp:
                problems.append(
                    f"{key}={value} is not divisible by the tensor-parallel size {tp} "
                    f"(parallel.strategy={p.strategy})"
                )
    if len(problems) == 1:
        raise SettingsError(problems[0])
    if problems:
        raise SettingsError(
            f"{len(problems)} problems with this layout on {world} processes:\n  - "
            + "\n  - ".join(problems)
        )


def backend_for(p: ParallelSettings, device: torch.device) -> str:
    """NCCL on CUDA, gloo on CPU. With cpu_offload the gradients live in CPU memory, and
    NCCL moves only GPU tensors: their norm (for clipping) is summed over gloo (torchtitan)."""
    backend = p.backend if p.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and p.cpu_offload:
        return "cuda:nccl,cpu:gloo"
    return backend


def setup(p: ParallelSettings, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared and build the mesh; (Dist(), device) alone."""
    if not launched():
        return Dist(), device
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = backend_for(p, device)
    # The timeout bounds how long a rank waits for one that died: the job stops, not hangs.
    timeout = timedelta(seconds=p.timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # After torchrun --max-restarts, torchrun's store still holds the dead attempt's
        # addresses under the same keys (gloo would dial them and fail): use fresh keys.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False, timeout
        )
        store = dist.PrefixStore(f"scratchlm/attempt_{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    tp = tp_degree(p, world)
    if p.strategy == "fsdp+tp":
        mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))
        dp_rank, dp_world = mesh["dp"].get_local_rank(), world // tp
    elif p.strategy == "tp":
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("tp",))
        dp_rank, dp_world = 0, 1  # every rank of a tensor-parallel group reads the same batch
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
        dp_rank, dp_world = rank, world
    return Dist(rank, world, p.strategy, mesh, dp_rank, dp_world), device


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_failure(e: BaseException) -> bool:
    """Whether an error says that another rank is gone (died, or too slow for the timeout)."""
    import torch.distributed as dist

    words = ("connection", "closed", "timed out", "timeout", "peer", "gloo", "nccl")
    text = str(e).lower()
    return launched() and (isinstance(e, dist.DistError) or any(w in text for w in words))


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- parallelize


class SplitLinear(nn.Module):
    """A fused projection (attention's q|k|v, SwiGLU's gate|up) as one Linear per part, so
    that a column-wise split gives each rank matching rows of every part: whole heads of q, k
    and v, the gate and up rows of the same hidden units (split as one matrix, rank 0 would get
    all of q and none of v, or all of gate and none of up). The outputs are concatenated again
    and the model's code is unchanged; `fuse_split` turns the state dict back into one matrix."""

    def __init__(self, fused: nn.Linear, sizes: list[int], names: tuple[str, ...]):
        super().__init__()
        self.names = names
        with torch.no_grad():
            weights = fused.weight.split(sizes, dim=0)
            biases = fused.bias.split(sizes) if fused.bias is not None else (None,) * len(sizes)
            for name, w, b in zip(names, weights, biases, strict=True):
                layer = nn.Linear(w.size(1), w.size(0), bias=b is not None, device=w.device)
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
                self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.names], dim=-1)


SPLITS = {"attn.qkv": ("q", "k", "v"), "mlp.fc": ("gate", "up")}  # fused Linear -> its parts


def fuse_split(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tensor-parallel state dict (attn.qkv.{q,k,v}.*, mlp.fc.{gate,up}.*) in the
    single-device layout."""
    out = {}
    for name, tensor in state.items():
        for fused, parts in SPLITS.items():
            if f".{fused}.{parts[0]}." in name:
                base, kind = name.split(f".{fused}.{parts[0]}.")
                pieces = [state[f"{base}.{fused}.{part}.{kind}"] for part in parts]
                out[f"{base}.{fused}.{kind}"] = torch.cat(pieces, dim=0)
                break
            if any(f".{fused}.{part}." in name for part in parts[1:]):
                break  # joined with the first part
        else:
            out[name] = tensor
    return out


def split_matrices(model: nn.Module) -> list[list[nn.Parameter]]:
    """The weights that are one matrix on one device (each SplitLinear's parts, in order):
    Muon orthogonalises them together, as one process does."""
    return [
        [getattr(m, name).weight for name in m.names]
        for m in model.modules()
        if isinstance(m, SplitLinear)
    ]


def apply_tp(model: nn.Module, mesh: Any) -> None:
    """Megatron-style: the first matrix of attention and MLP split by output columns, the
    second by input rows (one all-reduce per sub-layer); the token embedding and LM head split
    by vocabulary. Norms and learned positions stay whole on every rank."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    tp = mesh.size()
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        attn.qkv = SplitLinear(attn.qkv, attn.sizes, SPLITS["attn.qkv"])
        plan = {f"attn.qkv.{part}": ColwiseParallel() for part in SPLITS["attn.qkv"]}
        if mlp.kind == "swiglu":  # each rank: the gate and up rows of the same hidden units
            mlp.fc = SplitLinear(mlp.fc, [mlp.proj.in_features] * 2, SPLITS["mlp.fc"])
            plan |= {f"mlp.fc.{part}": ColwiseParallel() for part in SPLITS["mlp.fc"]}
        else:
            plan["mlp.fc"] = ColwiseParallel()
        plan |= {"attn.proj": RowwiseParallel(), "mlp.proj": RowwiseParallel()}
        parallelize_module(block, mesh, plan)
        # Each rank now computes n_head / tp heads on local tensors (use_local_output).
        attn.n_head //= tp
        attn.n_kv_head //= tp
        attn.sizes = [size // tp for size in attn.sizes]
    plan = {
        "wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        # Whole logits on every rank: the loss code stays the single-device one.
        "lm_head": ColwiseParallel(output_layouts=Replicate()),
    }
    parallelize_module(model, mesh, plan)
    if model.cfg.tie_embeddings:  # both are split by vocabulary rows (Shard(0)): re-tie them
        model.lm_head.weight = model.wte.weight


def fsdp_policies(p: ParallelSettings, device: torch.device) -> dict[str, Any]:
    """fully_shard's precision and offload policies: on CUDA (mixed_precision) parameters
    are gathered in bf16 for compute while gradients are reduced in float32; cpu_offload
    keeps the shards (and so AdamW's state and step) in pinned CPU memory."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and p.mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if p.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def apply_fsdp(model: nn.Module, mesh: Any, p: ParallelSettings, device: torch.device) -> None:
    """FSDP2: each block is one unit (gathered just before it runs, freed after), the root
    holds the rest (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mesh": mesh, **fsdp_policies(p, device)}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations during backward instead of storing them."""
    for block in model.blocks:
        block.forward = partial(checkpoint, type(block).forward, block, use_reentrant=False)


def parallelize(
    model: nn.Module,
    d: Dist,
    p: ParallelSettings,
    device: torch.device,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Apply the strategy (and activation checkpointing, on one process too) in torchtitan's
    order: tensor parallel, then checkpointing, then FSDP or DDP. Returns what to call for
    forward: the DDP wrapper, or the model itself, changed in place."""
    if d.enabled and d.strategy in ("tp", "fsdp+tp"):
        apply_tp(model, d.mesh["tp"])
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if not d.enabled:
        return model
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if d.strategy in ("fsdp", "fsdp+tp"):
        apply_fsdp(model, d.mesh["dp"], p, device)
    return model


def no_sync(forward: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP: skip the gradient all-reduce on accumulation micro-steps (only the last syncs)."""
    if sync or not hasattr(forward, "no_sync"):
        return contextlib.nullcontext()
    return forward.no_sync()


# --------------------------------------------------------------------------- step helpers


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """The global gradient norm, clipped to `max_norm`. Sharded gradients (DTensor) contribute
    their full norm; a replicated plain gradient counts once, as on one device. One collective
    per device mesh (as torchtitan does), not one per parameter."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    by_mesh: dict[Any, list[torch.Tensor]] = {}
    for g in grads:
        by_mesh.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    norms = []
    for group in by_mesh.values():
        n = torch.nn.utils.get_total_norm(group, 2.0)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(norms)).item()
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:  # a Python number: the gradients may mix DTensors and plain tensors
        for g in grads:
            g.mul_(coef)
    return total


def reduce_step_stats(
    d: Dist, loss: float, signalled: bool, late: bool
) -> tuple[float, bool, bool]:
    """The mean loss over data-parallel ranks, and whether any rank was signalled or ran out
    of time: one all-reduce, so that all ranks stop at the same step."""
    import torch.distributed as dist

    t = torch.tensor([loss, float(signalled), float(late)], dtype=torch.float64)
    if d.mesh.device_type == "cuda":
        t = t.cuda()
    dist.all_reduce(t)  # over all ranks: tensor-parallel peers hold the same loss
    loss_sum, signals, lates = t.tolist()  # one device-to-host copy
    return loss_sum / d.world, bool(signals), bool(lates)
