"""The stage cache: skip what is done, re-run what changed or was interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe

from scratchlm.errors import StageError
from scratchlm.pipeline import Workspace, is_fresh, read_manifest, run_pipeline, stage_key


def ran(results) -> list[str]:
    return [r.stage for r in results if r.ran]


def text_sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    from pydoc_data.topics import topics

    for i, text in enumerate(list(topics.values())[:40]):
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


@pytest.fixture
def done(tmp_path):
    """A workspace where the whole tiny chain has run once, on text files we can change."""
    folder = text_sources(tmp_path)
    recipe = tiny_recipe(
        curate={"sources": [str(folder)]}, pretrain={"max_steps": 10, "eval_every": 10}
    )
    ws = Workspace(tmp_path / "work", recipe.pretrain.name)
    results = run_pipeline(recipe, ws, progress=False)
    assert ran(results) == ["curate", "tokenizer", "tokenize", "pretrain", "sample", "eval"]
    return recipe, ws, folder


def test_second_run_skips_every_stage(done):
    recipe, ws, _ = done
    start = time.time()
    assert ran(run_pipeline(recipe, ws, progress=False)) == []
    assert time.time() - start < 10


def test_changed_settings_rerun_that_stage_and_what_depends_on_it(done):
    recipe, ws, _ = done
    recipe.tokenize.seed = 99
    assert ran(run_pipeline(recipe, ws, progress=False)) == [
        "tokenize",
        "pretrain",
        "sample",
        "eval",
    ]
    recipe.generate.max_new_tokens = 5
    assert ran(run_pipeline(recipe, ws, progress=False)) == ["sample"]
    recipe.eval.max_items = 20
    assert ran(run_pipeline(recipe, ws, progress=False)) == ["eval"]
    task = ws.root / "task.jsonl"
    task.write_text('{"context": "The", "choices": ["for", "if"], "answer": 0}\n')
    recipe.eval.tasks = ["cloze", f"mc:{task}"]
    assert ran(run_pipeline(recipe, ws, progress=False)) == ["eval"]
    task.write_text('{"context": "The", "choices": ["for", "if"], "answer": 1}\n')
    assert ran(run_pipeline(recipe, ws, progress=False)) == ["eval"]  # the file changed
    recipe.eval.batch_size = 3  # speed only: same scores
    assert ran(run_pipeline(recipe, ws, progress=False)) == []


def test_changed_input_file_reruns_from_curation(done):
    recipe, ws, folder = done
    (folder / "doc00.txt").write_text("A brand new document about something else entirely. " * 30)
    assert ran(run_pipeline(recipe, ws, progress=False)) == [
        "curate",
        "tokenizer",
        "tokenize",
        "pretrain",
        "sample",
        "eval",
    ]


def test_forced_stage_with_identical_output_leaves_downstream_alone(done):
    recipe, ws, _ = done
    # The tokenizer is deterministic: forcing it reproduces the same file, so the tokens stand.
    assert ran(run_pipeline(recipe, ws, force=("tokenizer",), progress=False)) == ["tokenizer"]


def test_same_output_or_speed_settings_leave_downstream_alone(done):
    recipe, ws, _ = done
    # curate's report holds its timing, which changes every run: the digest ignores it.
    assert ran(run_pipeline(recipe, ws, force=("curate",), progress=False)) == ["curate"]
    recipe.tokenize.threads = 1  # how fast, not what: not part of the stage key
    recipe.tokenizer.workers = 1
    assert ran(run_pipeline(recipe, ws, progress=False)) == []


def test_missing_output_file_reruns_the_stage(done):
    recipe, ws, _ = done
    (ws.out("tokenize") / "meta.json").unlink()
    assert "tokenize" in ran(run_pipeline(recipe, ws, progress=False))


def test_stage_without_its_upstream_says_what_to_run(tmp_path):
    recipe = tiny_recipe()
    with pytest.raises(StageError, match="run `scratchlm curate` first"):
        stage_key("tokenizer", recipe, Workspace(tmp_path, "tiny"))


def test_crash_inside_a_stage_leaves_no_output_folder(tmp_path, monkeypatch):
    import scratchlm.data.steps as steps_module

    calls = {"n": 0}
    real = steps_module.normalize

    def crash_after_ten(text, fix_mojibake):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("simulated crash")
        return real(text, fix_mojibake)

    monkeypatch.setattr(steps_module, "normalize", crash_after_ten)
    ws = Workspace(tmp_path / "work", "tiny")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(tiny_recipe(), ws, progress=False)
    assert not ws.out("curate").exists()
    assert list((tmp_path / "work").iterdir()) == []  # no temp folder left behind either


def test_crash_while_tokenizing_leaves_no_partial_shard(tmp_path, monkeypatch):
    from scratchlm.tokenizer.tokenizer import BPETokenizer

    ws = Workspace(tmp_path / "work", "tiny")
    recipe = tiny_recipe(curate={"max_docs": 0, "min_words": 0})
    real = BPETokenizer.encode_batch
    batches = {"n": 0}

    def crash_on_second_batch(self, texts, threads=0):
        batches["n"] += 1
        if batches["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(self, texts, threads)

    monkeypatch.setattr(BPETokenizer, "encode_batch", crash_on_second_batch)
    import scratchlm.tokenizer.shards as shards

    real_batches = shards._batches
    monkeypatch.setattr(
        shards, "_batches", lambda texts, size: real_batches(texts, 20)
    )  # several batches
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(recipe, ws, progress=False)
    assert batches["n"] == 2  # the first batch's tokens were written before the crash
    assert not ws.out("tokenize").exists()
    assert sorted(p.name for p in ws.root.iterdir()) == ["curated", "tokenizer"]
    monkeypatch.setattr(BPETokenizer, "encode_batch", real)
    assert ran(run_pipeline(recipe, ws, progress=False)) == [
        "tokenize",
        "pretrain",
        "sample",
        "eval",
    ]


def test_interrupted_stage_reruns(tmp_path, write_recipe):
    """Kill `scratchlm run` in the middle of pretraining; the next run skips the finished
    stages and trains again, because the killed stage never wrote its manifest."""
    recipe_path = write_recipe(pretrain={"max_steps": 100_000, "eval_every": 1000})
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scratchlm", "run", str(recipe_path), "--work", str(work), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = work / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 200):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metrics.exists(), "pretraining never started"

    from scratchlm.config import load_recipe

    recipe = load_recipe(str(recipe_path))
    ws = Workspace(work, "tiny")
    assert read_manifest(ws.out("pretrain")) is None
    assert all(
        is_fresh(s, stage_key(s, recipe, ws), ws) for s in ("curate", "tokenizer", "tokenize")
    )

    recipe.pretrain.max_steps = 20  # the same interrupted stage, now short enough to finish
    assert ran(run_pipeline(recipe, ws, progress=False)) == ["pretrain", "sample", "eval"]


# --------------------------------------------------------------------------- re-runs keep runs


def weights_digest(run: Path) -> str:
    from scratchlm import runs
    from scratchlm.io import file_sha256

    return file_sha256(runs.latest_checkpoint(run) / "model.safetensors")


def test_a_rerun_with_other_settings_keeps_the_trained_run_and_switching_back_puts_it_back(done):
    from scratchlm import runs

    recipe, ws, _ = done
    run = ws.out("pretrain")
    first = weights_digest(run)
    recipe.pretrain.max_steps = 12  # "train longer"
    results = run_pipeline(recipe, ws, progress=False)
    assert ran(results) == ["pretrain", "sample", "eval"]
    (kept,) = runs.kept_runs(run)
    assert "kept as" in results[3].note and str(kept) in results[3].note
    assert weights_digest(kept) == first and read_manifest(kept) is not None
    assert runs.checkpoints(run)[-1].name == "step_000012"

    recipe.pretrain.max_steps = 10  # back to the settings of the kept run: no training
    results = run_pipeline(recipe, ws, progress=False)
    assert "pretrain" not in ran(results) and "put back" in results[3].note
    assert weights_digest(run) == first
    (longer,) = runs.kept_runs(run)  # the 12-step run is kept in its turn
    assert runs.checkpoints(longer)[-1].name == "step_000012"
    assert ran(run_pipeline(recipe, ws, progress=False)) == []


def test_resume_of_a_run_past_max_steps_changes_nothing_and_says_so(done):
    recipe, ws, _ = done
    config = (ws.out("pretrain") / "config.yaml").read_text()
    recipe.pretrain.max_steps, recipe.pretrain.resume = 5, "auto"
    results = run_pipeline(recipe, ws, progress=False)
    assert ran(results) == []  # nothing trained, and nothing after it re-runs
    assert "at step 10, pretrain.max_steps=5: nothing to resume, nothing changed" in results[3].note
    assert (ws.out("pretrain") / "config.yaml").read_text() == config
    recipe.pretrain.max_steps, recipe.pretrain.resume = 10, "never"
    assert ran(run_pipeline(recipe, ws, progress=False)) == []  # still the run it was


def test_the_readme_flow_never_deletes_the_longer_run(tmp_path, write_recipe):
    """README: `scratchlm run --set pretrain.max_steps=...` then `scratchlm run --force
    tokenizer` once retrained at the recipe's steps and deleted the longer run."""
    recipe_path = write_recipe(pretrain={"max_steps": 6, "eval_every": 6})
    work = tmp_path / "work"

    def scratchlm(*args: str) -> str:
        cmd = [sys.executable, "-m", "scratchlm", "run", str(recipe_path), "--work", str(work)]
        proc = subprocess.run(
            [*cmd, "-q", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    scratchlm()
    out = scratchlm("--set", "pretrain.max_steps=8")
    assert "the run that was there is kept as" in out
    longer = weights_digest(work / "runs" / "tiny")
    out = scratchlm("--force", "tokenizer")  # the recipe's 6 steps again
    assert "pretrain   skipped" in out and "put back the run kept as" in out
    kept = [p for p in (work / "runs").iterdir() if p.name.startswith("tiny.")]
    assert [weights_digest(p) for p in kept] == [longer]
