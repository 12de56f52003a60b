"""Checkpoints that fall back: checksums written and verified, the newest intact checkpoint
used with a warning naming what was wrong, leftovers of killed saves cleaned, a kill before the
final evaluation finished on resume, and no file of a run folder ever unpickled."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file

from scratchlm import runs
from scratchlm.config import Recipe
from scratchlm.errors import StageError
from scratchlm.pipeline import Workspace
from scratchlm.train.loop import Trainer


def recipe_for(**pretrain) -> Recipe:
    base = {
        "max_steps": 8,
        "batch_size": 4,
        "eval_every": 4,
        "eval_batches": 2,
        "threads": 1,
        "checkpoint_every": 4,
        "peak_flops": 1e11,
    }
    return tiny_recipe(pretrain=base | pretrain)


def resumed(recipe: Recipe, **pretrain) -> Recipe:
    changes = {"resume": "auto"} | pretrain
    return dataclasses.replace(recipe, pretrain=dataclasses.replace(recipe.pretrain, **changes))


def train(ws: Workspace, run: Path, recipe: Recipe):
    tokenizer = ws.out("tokenizer") / "tokenizer.json"
    return Trainer(recipe, ws.out("tokenize"), tokenizer, run, progress=False).run()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(runs.latest_checkpoint(run) / runs.WEIGHTS))


@pytest.fixture(scope="module")
def straight(tokens, tmp_path_factory) -> Path:
    """12 steps without interruption: what every resumed run below must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tokens, run, recipe_for(max_steps=12))
    return run


def two_checkpoints(tokens, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    train(tokens, run, recipe_for())
    assert [c.name for c in runs.checkpoints(run)] == ["step_000004", "step_000008"]
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte_in_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: length, JSON header, data
    data[header + (len(data) - header) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def forget_checksums_and_truncate_state(ckpt: Path) -> None:
    """A checkpoint written before checksums existed, then damaged."""
    meta = runs.read_meta(ckpt)
    del meta[runs.CHECKSUMS]
    (ckpt / runs.META).write_text(json.dumps(meta))
    truncate(ckpt / runs.STATE)


DAMAGE = {
    "truncated weights": (lambda c: truncate(c / runs.WEIGHTS), "model.safetensors has changed"),
    "truncated state": (lambda c: truncate(c / runs.STATE), "state.pt has changed"),
    "garbage meta.json": (lambda c: (c / runs.META).write_text("{not json"), "meta.json is unreadable"),
    "flipped byte in a tensor": (lambda c: flip_a_byte_in_tensor_data(c / runs.WEIGHTS), "model.safetensors has changed"),
    "old checkpoint, truncated state": (forget_checksums_and_truncate_state, "state.pt is damaged"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    tokens, straight, tmp_path, damage
):
    run = two_checkpoints(tokens, tmp_path)
    spoil, problem = DAMAGE[damage]
    spoil(run / "checkpoints" / "step_000008")

    with pytest.warns(runs.DamagedCheckpointWarning, match=f"step_000008: .*{problem}"):
        loaded = runs.load_model(run)  # generate, serve, export, eval read the same way
    assert loaded.checkpoint == "step_000004"

    with pytest.warns(runs.DamagedCheckpointWarning, match=f"step_000008: .*{problem}"):
        summary = train(tokens, run, resumed(recipe_for(), max_steps=12))
    assert summary.steps == 12
    a, b = final_weights(straight), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from step 4: the same run


def test_checksums_are_recorded_for_every_file(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    ckpt = runs.latest_checkpoint(run)
    sums = runs.read_meta(ckpt)[runs.CHECKSUMS]
    assert set(sums) == {runs.WEIGHTS, runs.STATE}
    assert sums == runs.file_checksums(ckpt, skip={runs.META})
    assert runs.checkpoint_problem(ckpt) is None
    assert runs.read_meta(ckpt)["val_loss"] is not None  # added after saving: still intact


def test_no_intact_checkpoint_is_a_clear_error(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    for ckpt in runs.checkpoints(run):
        truncate(ckpt / runs.WEIGHTS)
    with pytest.warns(runs.DamagedCheckpointWarning), pytest.raises(StageError, match="no intact"):
        train(tokens, run, resumed(recipe_for(), max_steps=12))


def test_a_step_folder_without_meta_does_not_break_later_saves(tokens, straight, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    (run / "checkpoints" / "step_000004" / runs.META).unlink()  # a kill inside an old pruning
    summary = train(tokens, run, resumed(recipe_for(), max_steps=12, keep_last=1))
    assert summary.steps == 12
    names = [c.name for c in runs.checkpoints(run)]
    assert "step_000004" not in names and names[-1] == "step_000012"


def test_leftovers_of_killed_saves_are_cleaned_on_the_next_start(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    child = subprocess.Popen(["true"])
    child.wait()  # a process that has ended: its temporaries are leftovers
    ckpts = run / "checkpoints"
    leftovers = [
        ckpts / f".step_000012.tmp-{child.pid}",  # one process's save, killed
        ckpts / ".step_000012.tmp",  # a distributed save, killed
        ckpts / f".step_000004.deleting-{child.pid}",  # a pruning, killed
        run / f".metrics.jsonl.tmp-{child.pid}",
    ]
    for path in leftovers[:3]:
        path.mkdir()
        (path / runs.WEIGHTS).write_bytes(b"x" * 1000)
    leftovers[3].write_text("half")
    live = ckpts / f".step_000012.tmp-{os.getppid()}"  # a process still running: not ours
    live.mkdir()
    train(tokens, run, resumed(recipe_for(), max_steps=9))
    assert not [p for p in leftovers if p.exists()]
    assert live.exists()


KILL_BEFORE_FINAL_EVALUATION = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from scratchlm.config import recipe_from_dict
from scratchlm.train.loop import Trainer
real = Trainer.evaluate
def evaluate(self):
    if self.step == self.s.max_steps:  # the last checkpoint is saved; its evaluation is next
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self)
Trainer.evaluate = evaluate
recipe = recipe_from_dict({recipe!r})
Trainer(recipe, Path({tokens!r}), Path({tokenizer!r}), Path({run!r}), progress=False).run()
"""


def test_a_kill_before_the_final_evaluation_is_finished_on_resume(tokens, tmp_path):
    recipe, run = recipe_for(), tmp_path / "run"
    reference = train(tokens, tmp_path / "reference", recipe)
    script = KILL_BEFORE_FINAL_EVALUATION.format(
        recipe=recipe.to_dict(), tokens=str(tokens.out("tokenize")),
        tokenizer=str(tokens.out("tokenizer") / "tokenizer.json"), run=str(run),
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert runs.read_meta(runs.latest_checkpoint(run))["val_loss"] is None

    summary = train(tokens, run, resumed(recipe))
    assert summary.steps == 8
    assert summary.final_val_loss == reference.final_val_loss  # step 8's, not step 4's
    assert runs.read_meta(runs.latest_checkpoint(run))["val_loss"] is not None
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [0, 4, 8]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["val_loss"] == min(r["val_loss"] for r in log if "val_loss" in r)


def test_a_global_batch_that_this_world_cannot_make_is_refused(tmp_path):
    from scratchlm.config import PretrainSettings
    from scratchlm.train.prepare import resumed_grad_accum

    saved = {"global_batch": 16, "data_parallel": 2}
    assert resumed_grad_accum(PretrainSettings(batch_size=4, grad_accum=2), 1, tmp_path, saved) == 4
    assert resumed_grad_accum(PretrainSettings(batch_size=2, grad_accum=2), 4, tmp_path, saved) == 2
    with pytest.raises(StageError, match="16 sequences per step on 2 process"):
        resumed_grad_accum(PretrainSettings(batch_size=3), 1, tmp_path, saved)


def test_a_metrics_line_cut_short_by_a_kill_does_not_stop_the_resume(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 4.')  # the line being written when the process died
    summary = train(tokens, run, resumed(recipe_for(), max_steps=10))
    assert summary.steps == 10
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 11))


def test_a_damaged_config_is_named(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    (run / runs.CONFIG).write_text("model: [unclosed\n")
    with pytest.raises(StageError, match=r"config.yaml is damaged"):
        runs.load_model(run)


# --------------------------------------------------------------------------- nothing unpickled


class TouchAFile:
    """A pickle payload: unpickling it creates a file (it could as well run anything)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def seal(ckpt: Path) -> None:
    """Recompute the checksums, as anyone crafting a folder can."""
    meta = runs.read_meta(ckpt)
    meta[runs.CHECKSUMS] = runs.file_checksums(ckpt, skip={runs.META})
    (ckpt / runs.META).write_text(json.dumps(meta))


def test_a_crafted_sharded_checkpoint_is_never_unpickled(tokens, tmp_path):
    run = two_checkpoints(tokens, tmp_path)
    ckpt, marker = runs.latest_checkpoint(run), tmp_path / "pwned"
    (ckpt / "sharded").mkdir()
    (ckpt / "sharded" / ".metadata").write_bytes(pickle.dumps(TouchAFile(marker)))
    seal(ckpt)

    with pytest.raises(StageError, match="trust_pickled_checkpoints=true"):
        train(tokens, run, resumed(recipe_for(), max_steps=12))
    assert not marker.exists()
    # The payload is real: a user who says they trust the folder runs it.
    with pytest.raises(BaseException):  # noqa: B017 (the payload is no checkpoint index)
        train(tokens, run, resumed(recipe_for(), max_steps=12, trust_pickled_checkpoints=True))
    assert marker.exists()


def test_a_crafted_value_inside_a_sharded_checkpoint_is_refused(tokens, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from scratchlm.model.gpt import GPT
    from scratchlm.train.optim import make_optimizer
    from scratchlm.train.safe_dcp import write_index

    run = two_checkpoints(tokens, tmp_path)
    ckpt, marker, recipe = runs.latest_checkpoint(run), tmp_path / "pwned", recipe_for()
    model = GPT(runs.model_config(run))
    optimizer = make_optimizer(model, recipe.pretrain, torch.device("cpu"))
    runs.load_weights(model, ckpt)
    optimizer.load_state_dict(runs.read_training_state(ckpt)["optimizer"])
    model_state, optim_state = get_state_dict(model, optimizer.optimizers)
    optim_state["param_groups"][0]["lr"] = TouchAFile(marker)  # torch.save pickles it
    with pytest.warns(UserWarning):  # DCP: no process group, so one process
        index = dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=ckpt / "sharded", no_dist=True)  # fmt: skip
    write_index(ckpt / "sharded", index)  # the index itself is honest JSON
    seal(ckpt)

    with pytest.raises(StageError, match="not plain data"):
        train(tokens, run, resumed(recipe, max_steps=12))
    assert not marker.exists()
