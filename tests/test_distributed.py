"""Training on several real processes (torchrun, gloo, CPU): every strategy gives the losses
and weights of one process with the same global batch; checkpoints move between world sizes;
a dead rank stops the job instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from safetensors.torch import load_file

from scratchlm import runs
from scratchlm.config import ModelConfig, ParallelSettings, PretrainSettings
from scratchlm.errors import SettingsError
from scratchlm.pipeline import Workspace, run_stage
from scratchlm.train.distributed import check_settings

STEPS = 10
# The global batch is 4 sequences x 4 micro-batches: one process accumulates 4, two take 2 each.
PRETRAIN = {
    "max_steps": STEPS,
    "batch_size": 4,
    "grad_accum": 4,
    "warmup_steps": 2,
    "eval_every": 5,
    "eval_batches": 2,
    "checkpoint_every": 5,
    "threads": 1,
    "peak_flops": 1e11,
}
MODEL = {"n_layer": 2, "n_head": 2, "dropout": 0.0}  # no dropout: results must not depend on RNG
# The demo's architecture and optimizer: Muon over sharded matrices, SwiGLU split by tp.
LLAMA_MUON = [
    "pretrain.optimizer=muon",
    "model.mlp=swiglu",
    "model.norm=rmsnorm",
    "model.position=rope",
    "model.tie_embeddings=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Token shards and a one-process reference run of STEPS steps, made once."""
    root = tmp_path_factory.mktemp("dist")
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe_dict(pretrain=PRETRAIN, model=MODEL)))
    ws = Workspace(root / "work", "tiny")
    for stage in ("curate", "tokenizer", "tokenize"):
        run_stage(stage, one_process_recipe(root, "single"), ws, progress=False)
    run_in_process(root, "single")
    run_in_process(root, "single-muon", *LLAMA_MUON)
    return root


def one_process_recipe(root: Path, name: str, *sets: str):
    from scratchlm.config import load_recipe

    return load_recipe(str(root / "recipe.yaml"), [f"pretrain.name={name}", *sets])


def run_in_process(root: Path, name: str, *sets: str) -> None:
    """One process, no launcher: in this process (saves a torch start-up per run)."""
    recipe = one_process_recipe(root, name, *sets)
    run_stage("pretrain", recipe, Workspace.for_recipe(recipe, root / "work"), progress=False)


def launch(
    root: Path,
    nproc: int,
    name: str,
    *sets: str,
    script: str | None = None,
    extra=(),
    ours: bool = False,
) -> subprocess.CompletedProcess:
    """`scratchlm pretrain` (or `script`) on `nproc` processes through torchrun, or (`ours`)
    through `scratchlm pretrain --nproc-per-node`, which starts torchrun itself."""
    args = ["pretrain", str(root / "recipe.yaml"), "--work", str(root / "work"), "-q"]
    args += ["--set", f"pretrain.name={name}"]
    for s in sets:
        args += ["--set", s]
    target = [script] if script else ["-m", "scratchlm"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), *extra]
    cmd += [*target, *args]
    if ours:
        cmd = [sys.executable, "-m", "scratchlm", *args, "--nproc-per-node", str(nproc)]
    # The tests folder (for scripts that import conftest) before whatever path was given.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    # The timeout turns a hang into a failure; it is not a speed requirement.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def run_dir(root: Path, name: str) -> Path:
    return root / "work" / "runs" / name


def losses(root: Path, name: str) -> dict[int, float]:
    lines = (run_dir(root, name) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def max_rel_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys() and a
    return max(abs(a[k] - b[k]) / abs(a[k]) for k in a)


def final_weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(runs.latest_checkpoint(run_dir(root, name)) / "model.safetensors"))


def assert_same_weights(root: Path, name: str, atol: float, ref_name: str = "single") -> None:
    ref, got = final_weights(root, ref_name), final_weights(root, name)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize(
    "strategy, nproc, sets, tol",
    [
        ("ddp", 2, ["pretrain.grad_accum=2"], 1e-6),  # started by scratchlm --nproc-per-node
        ("fsdp", 2, ["pretrain.grad_accum=2"], 1e-4),
        ("fsdp", 2, ["pretrain.grad_accum=2", *LLAMA_MUON], 1e-4),
        ("tp", 2, LLAMA_MUON, 1e-4),  # every rank sees the whole batch; tp_size is ignored
        ("fsdp+tp", 4, ["pretrain.grad_accum=2", "parallel.tp_size=2", *LLAMA_MUON], 1e-4),
    ],
    ids=["ddp", "fsdp", "fsdp-muon-swiglu", "tp-muon-swiglu", "fsdp+tp-muon-swiglu"],
)
def test_strategy_matches_one_process(work, strategy, nproc, sets, tol):
    muon = "pretrain.optimizer=muon" in sets
    name, ref = (
        strategy.replace("+", "") + ("-muon" if muon else ""),
        "single-muon" if muon else "single",
    )
    ours = strategy == "ddp"
    result = launch(work, nproc, name, f"parallel.strategy={strategy}", *sets, ours=ours)
    assert result.returncode == 0, result.stdout + result.stderr
    diff = max_rel_diff(losses(work, ref), losses(work, name))
    print(f"{strategy}: max relative loss difference over {STEPS} steps {diff:.2e}")
    assert diff <= tol
    assert_same_weights(work, name, atol=1e-5, ref_name=ref)
    # Rank 0 alone prints: one summary line, not one per process.
    assert result.stdout.count("pretrain   ran") == 1
    meta = json.loads((runs.latest_checkpoint(run_dir(work, name)) / "meta.json").read_text())
    assert meta["parallel"] == {"strategy": strategy, "world": nproc}


def resumed_copy(root: Path, source: str, name: str) -> None:
    """A copy of run `source` whose last checkpoint is gone: resuming redoes steps 6..10."""
    shutil.rmtree(run_dir(root, name), ignore_errors=True)
    shutil.copytree(run_dir(root, source), run_dir(root, name))
    shutil.rmtree(run_dir(root, name) / "checkpoints" / f"step_{STEPS:06d}")


def test_checkpoints_reshard_between_world_sizes(work):
    # 2 -> 1: a sharded (DCP) checkpoint of two fsdp ranks, resumed by one plain process.
    if not run_dir(work, "fsdp").exists():
        assert (
            launch(work, 2, "fsdp", "parallel.strategy=fsdp", "pretrain.grad_accum=2").returncode
            == 0
        )
    resumed_copy(work, "fsdp", "two-to-one")
    assert (run_dir(work, "two-to-one") / "checkpoints" / "step_000005" / "sharded").is_dir()
    run_in_process(work, "two-to-one", "pretrain.resume=auto")
    # 1 -> 2: a single-file checkpoint, resumed by two fsdp ranks.
    resumed_copy(work, "single", "one-to-two")
    result = launch(
        work,
        2,
        "one-to-two",
        "pretrain.resume=auto",
        "parallel.strategy=fsdp",
        "pretrain.grad_accum=2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ref = losses(work, "single")
    for name in ("two-to-one", "one-to-two"):
        got = losses(work, name)
        diff = max_rel_diff({k: ref[k] for k in got}, got)
        print(f"{name}: max relative loss difference after resuming {diff:.2e}")
        assert diff <= 1e-4
        assert_same_weights(work, name, atol=1e-5)


def test_a_fixed_grad_accum_keeps_the_global_batch_on_fewer_processes(work):
    # 2 fsdp ranks x grad_accum 2 x 4 sequences = 16 a step. Resumed in one process with the
    # same grad_accum=2, that would be 8: grad_accum becomes 4 and the losses stay the single run's.
    if not run_dir(work, "fsdp").exists():
        launch(work, 2, "fsdp", "parallel.strategy=fsdp", "pretrain.grad_accum=2")
    resumed_copy(work, "fsdp", "fixed-accum")
    run_in_process(work, "fixed-accum", "pretrain.resume=auto", "pretrain.grad_accum=2")
    ref, got = losses(work, "single"), losses(work, "fixed-accum")
    assert max_rel_diff({k: ref[k] for k in got}, got) <= 1e-4
    meta = runs.read_meta(runs.latest_checkpoint(run_dir(work, "fixed-accum")))
    assert (meta["global_batch"], meta["data_parallel"]) == (16, 1)


CRASHER = """
import os, sys
from scratchlm.train.loop import Trainer
real = Trainer.train_step
def train_step(self):
    # Rank 1 dies at step {step} without a word, as with a segfault or an OOM kill; with
    # restarts, only in the first attempt.
    if self.step == {step} and os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os._exit(1)
    return real(self)
Trainer.train_step = train_step
from scratchlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_dead_rank_stops_the_job(work, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHER.format(step=3))
    result = launch(
        work,
        2,
        "crash",
        "parallel.strategy=ddp",
        "pretrain.grad_accum=2",
        "parallel.timeout=30",
        script=str(script),
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    # torchrun names the rank that died and its exit code; the survivor says what happened
    assert "rank      : 1" in out and "exitcode  : 1" in out, out[-3000:]
    assert "a collective operation failed" in out, out[-3000:]


def test_max_restarts_resume_from_the_last_checkpoint(work, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHER.format(step=7))  # after the checkpoint at step 5
    result = launch(
        work,
        2,
        "restarted",
        "parallel.strategy=ddp",
        "pretrain.grad_accum=2",
        "parallel.timeout=30",
        script=str(script),
        extra=["--max-restarts", "1"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a collective operation failed" in result.stderr  # the first attempt did fail
    got, ref = losses(work, "restarted"), losses(work, "single")
    assert sorted(got) == sorted(ref)
    assert max_rel_diff(ref, got) <= 1e-6


def test_impossible_layouts_are_refused_before_any_work():
    s = PretrainSettings()
    cfg = ModelConfig(n_head=3, n_embd=48, vocab_size=100)
    with pytest.raises(SettingsError, match=r"model.n_head=3 .*tensor-parallel size 2"):
        check_settings(ParallelSettings(strategy="tp"), cfg, s, world=2)
    with pytest.raises(SettingsError, match="parallel.tp_size=4"):
        check_settings(ParallelSettings(strategy="fsdp+tp", tp_size=4), ModelConfig(), s, world=6)
    with pytest.raises(SettingsError, match="parallel.cpu_offload=true"):
        check_settings(ParallelSettings(strategy="fsdp", cpu_offload=True), ModelConfig(), s, 2)
    # every problem at once, not one per attempt
    with pytest.raises(SettingsError, match="3 problems") as e:
        check_settings(ParallelSettings(strategy="tp", cpu_offload=True), cfg, s, world=2)
    assert all(k in str(e.value) for k in ("cpu_offload", "model.n_head=3", "model.n_kv_head=3"))
    check_settings(ParallelSettings(strategy="tp"), cfg, s, world=1)  # one process: fine
    muon_swiglu = ModelConfig(mlp="swiglu", n_embd=192, n_head=4)  # the demo's: fine now
    for strategy in ("fsdp", "tp", "fsdp+tp"):
        check_settings(ParallelSettings(strategy=strategy), muon_swiglu, PretrainSettings(optimizer="muon"), 4)  # fmt: skip


def test_a_layout_that_cannot_work_is_refused_before_any_worker_starts(work):
    """Every problem in one message: before torchrun starts (scratchlm pretrain
    --nproc-per-node), or once, from rank 0, when torchrun was started by hand."""
    bad = ["parallel.strategy=tp", "model.n_head=3", "model.n_embd=48", "parallel.cpu_offload=true"]
    result = launch(work, 2, "refused", *bad, ours=True)
    assert result.returncode == 2
    assert result.stderr.startswith("scratchlm: error: 3 problems with this layout"), result.stderr
    assert "Traceback" not in result.stderr and "torch.distributed" not in result.stderr
    assert "model.n_head=3" in result.stderr and "parallel.cpu_offload" in result.stderr
    by_hand = launch(work, 2, "refused", *bad)
    assert by_hand.returncode != 0 and by_hand.stderr.count("scratchlm: error:") == 1
    assert not run_dir(work, "refused").exists()


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_with_a_checkpoint(work):
    """torchrun passes SIGTERM (a preemption) to every rank; they agree on one step (the flag
    travels with the loss all-reduce), save one sharded checkpoint together and stop."""
    import signal
    import time

    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    args += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    args += ["-m", "scratchlm", "pretrain", str(work / "recipe.yaml"), "--work", str(work / "work")]
    args += ["-q", "--set", "pretrain.name=sigterm", "--set", "pretrain.max_steps=400"]
    args += ["--set", "pretrain.grad_accum=2", "--set", "pretrain.eval_every=100"]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    metrics = run_dir(work, "sigterm") / "metrics.jsonl"
    deadline = time.monotonic() + 120  # a guard against a hang, not a speed requirement
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"loss"') >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    saved = [line for line in err.splitlines() if "interrupted by SIGTERM: saved step" in line]
    assert len(saved) == 2 and saved[0] == saved[1], err[-3000:]  # both ranks, the same step
    step = int(saved[0].split("saved step ")[1].split(";")[0])
    assert (run_dir(work, "sigterm") / "checkpoints" / f"step_{step:06d}" / "sharded").is_dir()
