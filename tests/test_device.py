"""The device layer's choices, checked on the CPU: what runs on a GPU is decided here (dtype,
autocast, batch copies, RNG state, MFU's peak, FSDP's policies, fused AdamW), and the GPU runs
of the same paths are in tests/test_cuda.py."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from scratchlm.config import ModelConfig, ParallelSettings, PretrainSettings
from scratchlm.device import (
    autocast_for,
    resolve_device,
    resolve_dtype,
    rng_state,
    set_rng_state,
    to_device,
)
from scratchlm.errors import StageError
from scratchlm.infer.engine import Engine
from scratchlm.infer.generate import generate_rows
from scratchlm.infer.layout import load_for_generation
from scratchlm.infer.row import Row
from scratchlm.model.gpt import GPT
from scratchlm.train.distributed import backend_for, fsdp_policies
from scratchlm.train.mfu import measure_matmul_peak, peak_dtype
from scratchlm.train.optim import make_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32) | kw
    return GPT(ModelConfig(**cfg)).eval()


def test_inference_dtype_auto_is_float32_on_cpu_and_names_a_bad_value():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(StageError, match=r"serve --dtype='half': expected one of auto, float32"):
        resolve_dtype("half", CPU, "serve --dtype")


def test_autocast_is_bf16_on_cuda_and_off_on_cpu():
    with autocast_for(CPU):
        assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only torch warns that it would disable it
        cuda = autocast_for(CUDA)
    assert isinstance(cuda, torch.autocast)
    assert cuda.device == "cuda" and cuda.fast_dtype == torch.bfloat16


def test_a_batch_to_the_cpu_is_not_copied():
    x = torch.arange(6).view(2, 3)
    assert to_device(x, CPU) is x


def test_rng_state_round_trip_and_older_checkpoints():
    state = rng_state(CPU)
    assert state["cuda"] is None  # no GPU: nothing more to save
    a = torch.rand(4)
    set_rng_state(state, CPU)
    assert torch.equal(torch.rand(4), a)
    set_rng_state({"torch": state["torch"], "cuda": [torch.zeros(8, dtype=torch.uint8)]}, CPU)
    assert torch.equal(torch.rand(4), a)  # the list form of older checkpoints is read too


def test_mfu_peak_is_measured_in_the_dtype_training_multiplies_in():
    assert peak_dtype(CPU) == torch.float32 and peak_dtype(CUDA) == torch.bfloat16
    torch.manual_seed(0)
    before = torch.get_rng_state()
    flops = measure_matmul_peak(CPU, size=64, seconds=0.02, dtype=torch.bfloat16)
    assert flops > 0
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone


def test_fsdp_mixed_precision_only_on_cuda_and_offload_when_asked():
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    on_gpu = fsdp_policies(ParallelSettings(), CUDA)
    assert on_gpu["mp_policy"] == MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32
    )
    assert "offload_policy" not in on_gpu
    assert fsdp_policies(ParallelSettings(), CPU) == {}
    assert fsdp_policies(ParallelSettings(mixed_precision=False), CUDA) == {}
    offload = fsdp_policies(ParallelSettings(cpu_offload=True), CUDA)
    assert isinstance(offload["offload_policy"], CPUOffloadPolicy)


def test_nccl_on_cuda_with_gloo_beside_it_for_offloaded_gradients():
    assert backend_for(ParallelSettings(), CUDA) == "nccl"
    assert backend_for(ParallelSettings(), CPU) == "gloo"
    # NCCL moves GPU tensors only: the CPU-resident gradients' norm is reduced over gloo
    assert backend_for(ParallelSettings(cpu_offload=True), CUDA) == "cuda:nccl,cpu:gloo"
    assert backend_for(ParallelSettings(backend="gloo", cpu_offload=True), CUDA) == "gloo"


@pytest.mark.parametrize("device, fused", [("cuda", True), ("cpu", True), ("mps", False)])
def test_adamw_is_fused_where_torch_has_the_kernel(device, fused):
    opt = make_optimizer(tiny_gpt(), PretrainSettings(), torch.device(device))
    assert opt.optimizers[0].defaults["fused"] is fused


def test_the_kv_cache_takes_the_autocast_dtype():
    model = tiny_gpt(position="rope")
    assert Engine(model, None).cache.k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine = Engine(model, None)
        assert engine.cache.k.dtype == engine.cache.v.dtype == torch.bfloat16
        rows = [Row([1, 2, 3], 4), Row([4, 5], 4)]  # generating under autocast works
        for _ in generate_rows(model, None, rows):
            pass
    assert all(len(r.tokens) == 4 for r in rows)


def test_generation_loads_in_the_dtype_asked_for(tiny_run):
    loaded = load_for_generation(tiny_run, CPU, torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    loaded = load_for_generation(tiny_run)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def scratchlm(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scratchlm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_generate_takes_a_device_and_dtype(tiny_run):
    greedy = ("--prompt", "The ", "--set", "generate.temperature=0", "--set", "generate.max_new_tokens=8")  # fmt: skip
    r = scratchlm("generate", str(tiny_run), *greedy, "--device", "cpu", "--dtype", "bfloat16")
    assert r.returncode == 0 and r.stdout.startswith("The "), r.stderr
    if not torch.cuda.is_available():
        r = scratchlm("generate", str(tiny_run), *greedy, "--device", "cuda")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "generate --device=cuda but torch sees no CUDA device" in r.stderr
    r = scratchlm("serve", str(tiny_run), "--dtype", "fp8")
    assert r.returncode == 2 and "serve --dtype='fp8': expected one of" in r.stderr
    with pytest.raises(StageError, match="eval --device='tpu'"):
        resolve_device("tpu", "eval --device")
