"""Checkpoints of a run on several processes, through torch.distributed.checkpoint (DCP).

    <run>/checkpoints/step_000600/sharded/            DCP: every rank writes its own shards of
                                                      the weights and the optimizer state;
                                  sharded/metadata.json  DCP's index as JSON (safe_dcp.py): we
                                                      never unpickle DCP's own .metadata
                                  model.safetensors   the whole weights, gathered by rank 0, so
                                                      generate / export / finetune read it as is
                                  state.pt            data position, RNG states, step (no optimizer)
                                  meta.json           as for single-process checkpoints

DCP stores each tensor with its global shape and where every shard sits, so a checkpoint
saved by N processes loads into M (2 -> 1, 1 -> 2, ...) and into any strategy whose
parameter names match (ddp, fsdp and one process share names; tp splits attn.qkv in three
and SwiGLU's mlp.fc in two).
A single-process checkpoint (no sharded/) resumes on N processes through the full-state path.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from scratchlm import runs
from scratchlm.errors import StageError
from scratchlm.io import publish_dir
from scratchlm.train.distributed import Dist, barrier, fuse_split
from scratchlm.train.safe_dcp import (
    INDEX,
    has_index,
    json_index_reader,
    safe_load_planner,
    write_index,
)


def is_sharded(ckpt: Path) -> bool:
    return (ckpt / "sharded").is_dir()


def _hyperparameters(optimizers: list[torch.optim.Optimizer]) -> list[list[dict[str, Any]]]:
    return [
        [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in optimizers
    ]


def _restore_hyperparameters(optimizers: list[torch.optim.Optimizer], hyper) -> None:
    """Keep learning rates, betas and decay as the current settings say (as single-process
    resume does), not as the checkpoint had them."""
    for opt, groups in zip(optimizers, hyper, strict=True):
        for group, h in zip(opt.param_groups, groups, strict=True):
            group.update(h)


def save_sharded(
    d: Dist,
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """All ranks write their shards into a temporary folder; rank 0 adds the gathered weights
    and the small files and renames the folder, so a folder named step_* is always whole."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    path = runs.checkpoint_path(run_dir, step)
    tmp = path.with_name(f".{path.name}.tmp")
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    model_state, optim_state = get_state_dict(model, optimizers)
    index = dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / "sharded")
    # Collective: every rank sends its shards; rank 0 alone receives them (on CPU).
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if d.main:
        write_index(tmp / "sharded", index)  # before the checksums, which cover it
        full = fuse_split(full)
        if model.cfg.tie_embeddings:  # stored once, as single-process checkpoints do
            full.pop("lm_head.weight", None)
        runs.write_checkpoint_files(tmp, step, full, meta, state)
        publish_dir(tmp, path)  # fsynced, and the old folder kept until the new one is in place
    barrier(d)
    return path


def load_sharded(
    ckpt: Path,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    strategy: str,
    trust_pickled: bool = False,
) -> None:
    """Load weights and optimizer state from DCP into however this run is laid out, without
    unpickling anything from the folder unless `trust_pickled` (see safe_dcp.py)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    saved = runs.read_meta(ckpt).get("parallel", {}).get("strategy")
    split = {"tp", "fsdp+tp"}
    if (saved in split) != (strategy in split):
        raise StageError(
            f"{ckpt} was saved with parallel.strategy={saved}; resume it with "
            + ("tp or fsdp+tp" if saved in split else "none, ddp or fsdp")
            + f" (not {strategy}), or start from its model.safetensors"
        )
    folder = ckpt / "sharded"
    if has_index(folder):
        reader, planner = json_index_reader(folder), safe_load_planner()
    elif trust_pickled:
        reader, planner = None, None  # DCP's own: pickle.load of .metadata
    else:
        raise StageError(
            f"{folder} has no {INDEX}: reading it means unpickling its .metadata, which runs "
            "any code a crafted folder holds. If you made this checkpoint (elsewhere, or with "
            "an older scratchlm), resume with --set pretrain.trust_pickled_checkpoints=true; "
            f"otherwise start a new run from {ckpt / runs.WEIGHTS}"
        )
    hyper = _hyperparameters(optimizers)
    model_state, optim_state = get_state_dict(model, optimizers)
    both = {"model": model_state, "optim": optim_state}
    try:
        dcp.load(both, checkpoint_id=folder, storage_reader=reader, planner=planner)
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if not _refused_unpickling(e):
            raise
        raise StageError(
            f"{folder}: holds a value that is not plain data (refused by weights_only=True): "
            "it was not written by scratchlm, and is not loaded"
        ) from None
    set_state_dict(
        model, optimizers, model_state_dict=both["model"], optim_state_dict=both["optim"]
    )
    _restore_hyperparameters(optimizers, hyper)


def full_optimizer_state(
    model: nn.Module, optimizers: list[torch.optim.Optimizer], saved: dict[str, Any]
) -> dict[str, Any]:
    """A single-process optimizer state (keyed by parameter position) in the name-keyed
    full form that `load_full_optimizer_state` spreads over ranks. `model` and
    `optimizers` are the not-yet-parallelized ones the state was saved from."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    for i, opt in enumerate(optimizers):
        opt.load_state_dict(saved[str(i)])
    return get_optimizer_state_dict(model, optimizers)


def load_full_optimizer_state(
    model: nn.Module, optimizers: list[torch.optim.Optimizer], full: dict[str, Any]
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    hyper = _hyperparameters(optimizers)
    set_optimizer_state_dict(
        model, optimizers, full, options=StateDictOptions(full_state_dict=True)
    )
    _restore_hyperparameters(optimizers, hyper)


def _refused_unpickling(e: BaseException) -> bool:
    """Did weights_only=True refuse a value? DCP wraps each rank's exception, with its
    traceback, in a CheckpointException: look through it."""
    seen: list[object] = [e, e.__cause__]
    for failure in (getattr(e, "failures", None) or {}).values():
        seen += list(failure) if isinstance(failure, tuple) else [failure]
    return any(isinstance(x, pickle.UnpicklingError) for x in seen)
