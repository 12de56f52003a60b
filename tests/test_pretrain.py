"""The pretraining loop: exact resume, non-finite handling, accumulation, checkpoints, logs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from scratchlm import runs
from scratchlm.config import Recipe
from scratchlm.errors import StageError
from scratchlm.pipeline import Workspace
from scratchlm.train.data import TokenData
from scratchlm.train.loop import Trainer, TrainingInterrupted


def recipe_for(**pretrain) -> Recipe:
    base = {
        "max_steps": 12,
        "batch_size": 4,
        "grad_accum": 2,
        "eval_every": 4,
        "eval_batches": 2,
        "threads": 1,
        "checkpoint_every": 4,
        "peak_flops": 1e11,
    }
    return tiny_recipe(pretrain=base | pretrain, model={"dropout": 0.1})


def trainer(ws: Workspace, run: Path, recipe: Recipe) -> Trainer:
    return Trainer(
        recipe, ws.out("tokenize"), ws.out("tokenizer") / "tokenizer.json", run, progress=False
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(runs.latest_checkpoint(run) / "model.safetensors"))


KILLER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from scratchlm.config import recipe_from_dict
from scratchlm.train.data import TokenData
from scratchlm.train.loop import Trainer
calls = {{"n": 0}}
real = TokenData.next_batch
def next_batch(self, batch_size):
    calls["n"] += 1
    if calls["n"] == {kill_at_call}:
        os.kill(os.getpid(), signal.SIGKILL)  # no chance to clean up, as with a power cut
    return real(self, batch_size)
TokenData.next_batch = next_batch
recipe = recipe_from_dict({recipe!r})
Trainer(recipe, Path({tokens!r}), Path({tokenizer!r}), Path({run!r}), progress=False).run()
"""


@pytest.mark.parametrize("kill_at_call", [20, 17], ids=["mid-accumulation", "start-of-step"])
def test_resume_after_sigkill_is_bit_identical(tokens, tmp_path, kill_at_call):
    recipe = recipe_for()
    trainer(tokens, tmp_path / "straight", recipe).run()

    # Step k fetches micro-batches 2k-1 and 2k: call 20 dies inside step 10's accumulation,
    # call 17 at the start of step 9, just after the step-8 checkpoint.
    script = KILLER.format(
        tests=str(Path(__file__).parent), kill_at_call=kill_at_call, recipe=recipe.to_dict(),
        tokens=str(tokens.out("tokenize")), tokenizer=str(tokens.out("tokenizer") / "tokenizer.json"), run=str(tmp_path / "killed"),
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert runs.latest_checkpoint(tmp_path / "killed").name == "step_000008"

    resumed = dataclasses.replace(
        recipe, pretrain=dataclasses.replace(recipe.pretrain, resume="auto")
    )
    summary = trainer(tokens, tmp_path / "killed", resumed).run()
    assert summary.steps == 12
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [
        r["step"]
        for r in map(json.loads, (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps == list(range(1, 13))  # the log, too, has each step once


def test_gradient_accumulation_equals_the_large_batch(tokens, tmp_path):
    common = {"max_steps": 3, "eval_every": 3, "eval_batches": 1, "threads": 1, "peak_flops": 1e11}
    big = trainer(
        tokens, tmp_path / "big", tiny_recipe(pretrain=common | {"batch_size": 8, "grad_accum": 1})
    )
    small = trainer(
        tokens,
        tmp_path / "small",
        tiny_recipe(pretrain=common | {"batch_size": 2, "grad_accum": 4}),
    )
    big.run()
    small.run()
    a, b = weights(tmp_path / "big"), weights(tmp_path / "small")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def _nan_at(t: Trainer, step: int) -> None:
    real = t.forward

    def forward(x, y):
        logits, loss = real(x, y)
        return logits, loss * float("nan") if t.step == step else loss

    t.forward = forward


def test_nonfinite_loss_stops_with_the_last_good_checkpoint(tokens, tmp_path):
    t = trainer(tokens, tmp_path, recipe_for(max_steps=8, checkpoint_every=2))
    _nan_at(t, 5)
    with pytest.raises(StageError, match=r"non-finite loss nan.*at step 5.*step_000004"):
        t.run()
    assert runs.latest_checkpoint(tmp_path).name == "step_000004"
    assert all(torch.isfinite(w).all() for w in weights(tmp_path).values())


def test_nonfinite_loss_can_skip_the_batch(tokens, tmp_path):
    t = trainer(tokens, tmp_path, recipe_for(max_steps=8, on_nonfinite="skip"))
    _nan_at(t, 5)
    summary = t.run()
    assert summary.skipped_batches == 1 and summary.steps == 8
    assert all(torch.isfinite(w).all() for w in weights(tmp_path).values())


def test_checkpoints_keep_the_last_k_and_the_best(tokens, tmp_path):
    trainer(
        tokens, tmp_path, recipe_for(max_steps=12, checkpoint_every=2, eval_every=2, keep_last=2)
    ).run()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert kept[-2:] == ["step_000010", "step_000012"]
    assert set(kept) == {"step_000010", "step_000012", best["checkpoint"]}


def test_metrics_plot_and_samples_are_written(tokens, tmp_path):
    trainer(tokens, tmp_path, recipe_for(max_steps=4, sample_every=2, eval_every=2)).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4 and all(
        {"lr", "grad_norm", "tokens_per_second", "mfu"} <= r.keys() for r in steps
    )
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 4]
    assert all(r["val_ppl"] > 1 for r in records if "val_ppl" in r)
    assert [r["step"] for r in records if "sample" in r] == [2, 4]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_saves_and_resume_continues(tokens, tmp_path):
    t = trainer(tokens, tmp_path, recipe_for(max_steps=12, checkpoint_every=0))
    real = t.train_step

    def step_then_signal():
        out = real()
        if t.step == 2:  # the step about to be counted is step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    t.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted, match="SIGTERM: saved step 3"):
        t.run()
    assert runs.latest_checkpoint(tmp_path).name == "step_000003"
    resumed = trainer(tokens, tmp_path, recipe_for(max_steps=12, checkpoint_every=0, resume="auto"))
    assert resumed.step == 3 and resumed.run().steps == 12


def test_resume_refuses_other_model_settings(tokens, tmp_path):
    trainer(tokens, tmp_path, recipe_for(max_steps=2)).run()
    other = tiny_recipe(
        pretrain={"max_steps": 4, "resume": "auto", "threads": 1}, model={"n_layer": 2}
    )
    with pytest.raises(StageError, match="other model settings"):
        trainer(tokens, tmp_path, other)


def test_tokens_per_step_sets_accumulation(tokens, tmp_path):
    t = trainer(tokens, tmp_path, recipe_for(tokens_per_step=4 * 32 * 3))
    assert t.grad_accum == 3
    with pytest.raises(StageError, match="not a multiple"):
        trainer(tokens, tmp_path, recipe_for(tokens_per_step=1000))


def test_data_order_is_a_shuffled_epoch_split_across_ranks(tokens):
    meta = json.loads((tokens.out("tokenize") / "meta.json").read_text())
    args = (tokens.out("tokenize"), "train", meta["files"]["train"], meta["dtype"], 32)
    data = TokenData(*args, seed=5)
    n = data.num_windows
    seen = [tuple(data.next_batch(1)[0][0, :4].tolist()) for _ in range(n)]
    starts = {tuple(data._window(i)[:4].tolist()) for i in range(n)}
    assert set(seen) == starts  # one epoch: every window once
    assert data.epoch == 0 and data.position == n
    r0, r1 = TokenData(*args, seed=5, rank=0, world=2), TokenData(*args, seed=5, rank=1, world=2)
    x0, x1, whole = (
        r0.next_batch(3)[0],
        r1.next_batch(3)[0],
        TokenData(*args, seed=5).next_batch(6)[0],
    )
    assert torch.equal(torch.cat([x0, x1]), whole)  # disjoint shares of the same global batch
    state = r0.state_dict()
    after = r0.next_batch(3)[0]
    r0.load_state_dict(state)
    assert torch.equal(r0.next_batch(3)[0], after)


def test_muon_orthogonalises_and_trains(tokens, tmp_path):
    from scratchlm.train.optim import zeropower_newton_schulz

    g = torch.randn(64, 32)
    s = torch.linalg.svdvals(zeropower_newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.3  # all directions of the update move alike
    summary = trainer(
        tokens,
        tmp_path,
        recipe_for(optimizer="muon", max_steps=30, eval_every=30, checkpoint_every=0),
    ).run()
    assert summary.final_val_loss < summary.initial_val_loss - 0.5


def test_activation_checkpointing_gives_the_same_gradients(tokens, tmp_path):
    from scratchlm.train.distributed import apply_activation_checkpointing

    plain = trainer(tokens, tmp_path / "a", recipe_for()).model
    ckpt = trainer(tokens, tmp_path / "b", recipe_for(activation_checkpointing=True)).model
    ckpt.load_state_dict(plain.state_dict())
    plain.eval(), ckpt.eval()  # no dropout: the two passes must agree exactly
    idx = torch.randint(plain.cfg.vocab_size, (2, 32))
    for model in (plain, ckpt):
        model(idx, idx)[1].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    apply_activation_checkpointing(plain)  # idempotent wrapping keeps working
    assert torch.isfinite(plain(idx, idx)[1])


def test_loggers_are_checked_before_training(tokens, tmp_path):
    import importlib.util

    with pytest.raises(StageError, match="unknown logger 'mlflow'"):
        trainer(tokens, tmp_path, recipe_for(loggers=["mlflow"]))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(StageError, match="pip install tensorboard"):
            trainer(tokens, tmp_path, recipe_for(loggers=["tensorboard"]))
    else:
        trainer(tokens, tmp_path, recipe_for(loggers=["tensorboard"], max_steps=2)).run()
        assert list((tmp_path / "tensorboard").glob("events.*"))


def test_a_signal_during_evaluation_still_saves(tokens, tmp_path):
    t = trainer(tokens, tmp_path, recipe_for(max_steps=12, checkpoint_every=0, eval_every=4))
    real = t.evaluate

    def evaluate_then_signal():
        loss = real()
        if t.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while evaluating, after the step
        return loss

    t.evaluate = evaluate_then_signal
    with pytest.raises(TrainingInterrupted, match="SIGINT: saved step 4"):
        t.run()
    assert runs.latest_checkpoint(tmp_path).name == "step_000004"


def test_resume_uses_the_new_optimizer_settings_and_refusal_writes_nothing(tokens, tmp_path):
    trainer(tokens, tmp_path, recipe_for(max_steps=4)).run()
    resumed = trainer(tokens, tmp_path, recipe_for(max_steps=8, lr=1e-4, resume="auto"))
    assert resumed.step == 4
    assert all(g["peak_lr"] == 1e-4 for g in resumed.optimizer.param_groups)
    config = (tmp_path / "config.yaml").read_text()
    other = tiny_recipe(
        pretrain={"max_steps": 8, "resume": "auto", "threads": 1}, model={"mlp": "relu2"}
    )
    with pytest.raises(StageError, match="other model settings"):
        trainer(tokens, tmp_path, other)
    assert (
        tmp_path / "config.yaml"
    ).read_text() == config  # the run folder still describes its weights


def test_shards_from_another_tokenizer_are_refused(tokens, tmp_path):
    from scratchlm.config import TokenizerSettings
    from scratchlm.tokenizer.train import train_tokenizer

    other = train_tokenizer(
        ["a different little corpus, a different vocabulary"],
        TokenizerSettings(vocab_size=270),
        progress=False,
    )
    other.save(tmp_path / "other.json")
    with pytest.raises(StageError, match="another tokenizer"):
        Trainer(
            recipe_for(),
            tokens.out("tokenize"),
            tmp_path / "other.json",
            tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def mfus(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["mfu"] for r in map(json.loads, lines) if "mfu" in r]


def test_mfu_never_exceeds_100_percent(tokens, tmp_path):
    """A peak far below what the steps reach (as one measured at a busy moment, or a wrong
    pretrain.peak_flops) is raised to the rate reached, and the line says so."""
    t = trainer(tokens, tmp_path / "low-peak", recipe_for(max_steps=4, peak_flops=1e3))
    said: list[str] = []
    t.metrics.say = said.append
    t.run()
    seen = mfus(tmp_path / "low-peak")
    assert len(seen) == 4 and max(seen) <= 1.0 and seen[0] == 1.0
    assert any("above the peak of 1e+03" in line for line in said), said


def test_the_measured_cpu_peak_is_the_best_of_several_and_only_ever_raised():
    from scratchlm.train.mfu import MFUMeter

    meter = MFUMeter(torch.device("cpu"), 0.0, flops_per_token=1e6)
    measured = meter.peak
    assert meter(tokens_per_second=measured / 1e6 / 2) == pytest.approx(0.5)
    assert meter(tokens_per_second=measured / 1e6 * 100) == 1.0  # faster than any measurement
    assert meter.peak == pytest.approx(measured * 100) and meter.raised
    assert meter.remeasures == MFUMeter.REMEASURES - 1  # it measured again before raising
