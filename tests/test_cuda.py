"""Every CUDA path on a tiny model: bf16 autocast, SDPA's flash kernel, exact resume, compile,
generation, FSDP2 mixed precision over NCCL, the server, CUDA RNG state, fused AdamW, and the
chain end to end. Run them with `pytest -m cuda` on a machine with a GPU (bench/gpu_check.sh
runs them first); without one they are skipped. The same choices are checked on the CPU in
tests/test_device.py.

Exact resume is checked with deterministic settings: `CUBLAS_WORKSPACE_CONFIG=:4096:8` and
`torch.use_deterministic_algorithms(True, warn_only=True)` (warn_only: an op with no
deterministic kernel warns, and the bit-for-bit comparison then fails and prints the warning).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file
from serving import running_server

from scratchlm import runs
from scratchlm.config import GenerateSettings, ModelConfig, PretrainSettings, Recipe
from scratchlm.device import autocast_for, rng_state, set_rng_state
from scratchlm.infer.generate import complete, sample
from scratchlm.infer.layout import load_for_generation
from scratchlm.model.gpt import GPT
from scratchlm.pipeline import Workspace, run_stage
from scratchlm.train.loop import Trainer
from scratchlm.train.optim import make_optimizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch sees none); on a GPU machine: pytest -m cuda",
    ),
]

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%): a loss through a few layers of
# bf16 matmuls lands within about 1% of the float32 one.
BF16_RTOL = 2e-2


def small_cfg(**kw) -> ModelConfig:
    cfg = dict(vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=64) | kw
    return ModelConfig(**cfg)


def batch(cfg: ModelConfig, seed: int = 0, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(cfg.vocab_size, (size, cfg.block_size + 1), generator=gen)
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def on_cuda(**pretrain) -> Recipe:
    base = {
        "device": "cuda",
        "max_steps": 12,
        "batch_size": 4,
        "grad_accum": 2,
        "eval_every": 4,
        "eval_batches": 2,
        "checkpoint_every": 4,
    }
    return tiny_recipe(pretrain=base | pretrain, model={"dropout": 0.1})


def trainer(ws: Workspace, run: Path, recipe: Recipe) -> Trainer:
    tok = ws.out("tokenizer") / "tokenizer.json"
    return Trainer(recipe, ws.out("tokenize"), tok, run, progress=False)


def losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(runs.latest_checkpoint(run) / "model.safetensors"))


# ------------------------------------------------------------------ the training step


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_a_bf16_step_matches_float32_within_bf16_tolerance(preset):
    kw = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "n_kv_head": 2} if preset == "llama" else {}  # fmt: skip
    cfg = small_cfg(**kw)
    torch.manual_seed(0)
    model = GPT(cfg).to(CUDA)
    x, y = (t.to(CUDA) for t in batch(cfg))
    _, loss32 = model(x, y)
    grads32 = torch.autograd.grad(loss32, list(model.parameters()))
    with autocast_for(CUDA):
        logits, loss16 = model(x, y)
    grads16 = torch.autograd.grad(loss16, list(model.parameters()))
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32  # the loss in fp32
    torch.testing.assert_close(loss16, loss32, rtol=BF16_RTOL, atol=0)
    for g16, g32 in zip(grads16, grads32, strict=True):
        cosine = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert cosine > 0.99
    # float32 on the GPU is float32 (TF32 is off unless asked for): the CPU's loss to 1e-5
    _, loss_cpu = copy.deepcopy(model).to(CPU)(x.cpu(), y.cpu())
    torch.testing.assert_close(loss32.cpu(), loss_cpu, rtol=1e-5, atol=0)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_training_runs_on_the_flash_attention_kernel(position):
    """Flash attention takes only bf16/fp16 q, k and v of one dtype: a float32 tensor slipping
    in (from the RoPE tables, say) would make SDPA refuse with 'No available kernel'."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = small_cfg(position=position, qk_norm=True, n_kv_head=2)
    torch.manual_seed(0)
    model = GPT(cfg).to(CUDA)
    x, y = (t.to(CUDA) for t in batch(cfg))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast_for(CUDA):
        _, loss = model(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_fused_adamw_on_cuda_matches_the_foreach_step():
    cfg = small_cfg()
    torch.manual_seed(0)
    model = GPT(cfg).to(CUDA)
    other = copy.deepcopy(model)
    opt = make_optimizer(model, PretrainSettings(), CUDA)
    assert opt.optimizers[0].defaults["fused"] is True
    plain = make_optimizer(other, PretrainSettings(), CUDA)
    for group in plain.optimizers[0].param_groups:
        group["fused"], group["foreach"] = False, True
    x, y = (t.to(CUDA) for t in batch(cfg))
    for m, o in ((model, opt), (other, plain)):
        for _ in range(3):
            m(x, y)[1].backward()
            o.step()
            o.zero_grad()
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_on_and_off_give_the_same_losses(tokens, tmp_path):
    recipe = on_cuda(max_steps=4, eval_every=4, checkpoint_every=0)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, dropout=0.0))
    eager = trainer(tokens, tmp_path / "eager", recipe)
    eager.run()
    compiled_recipe = dataclasses.replace(
        recipe, pretrain=dataclasses.replace(recipe.pretrain, compile=True)
    )
    compiled = trainer(tokens, tmp_path / "compiled", compiled_recipe)
    compiled.run()
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=BF16_RTOL), step


# ------------------------------------------------------------------ exact resume, RNG state


def test_cuda_rng_state_is_saved_and_restored(tokens, tmp_path):
    state = rng_state(CUDA)
    assert state["cuda"].dtype == torch.uint8
    a = torch.rand(8, device=CUDA)
    set_rng_state(state, CUDA)
    assert torch.equal(torch.rand(8, device=CUDA), a)

    t = trainer(tokens, tmp_path / "run", on_cuda(max_steps=2, checkpoint_every=2))
    t.run()
    saved = runs.read_training_state(runs.latest_checkpoint(tmp_path / "run"))["rng"]
    assert isinstance(saved["cuda"], torch.Tensor) and saved["cuda"].dtype == torch.uint8
    after_save = torch.cuda.get_rng_state()  # nothing drew since the final save (no sampling)
    assert torch.equal(saved["cuda"], after_save)


DETERMINISTIC_RUN = """
import os, signal, sys, warnings
from pathlib import Path
import torch
torch.use_deterministic_algorithms(True, warn_only=True)
warnings.simplefilter("always")
from scratchlm.config import recipe_from_dict
from scratchlm.train.data import TokenData
from scratchlm.train.loop import Trainer
kill_at_call = {kill_at_call}
calls = {{"n": 0}}
real = TokenData.next_batch
def next_batch(self, batch_size):
    calls["n"] += 1
    if calls["n"] == kill_at_call:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch_size)
TokenData.next_batch = next_batch
for run in {runs!r}:
    Trainer(recipe_from_dict({recipe!r}), Path({tokens!r}), Path({tokenizer!r}), Path(run), progress=False).run()
"""


def deterministic_run(ws: Workspace, recipe: Recipe, runs_: list[Path], kill_at_call: int = 0):
    script = DETERMINISTIC_RUN.format(
        kill_at_call=kill_at_call, runs=[str(r) for r in runs_], recipe=recipe.to_dict(),
        tokens=str(ws.out("tokenize")), tokenizer=str(ws.out("tokenizer") / "tokenizer.json"),
    )  # fmt: skip
    e = env() | {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    cmd = [sys.executable, "-c", script]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


def test_resume_on_cuda_is_bit_identical(tokens, tmp_path):
    recipe = on_cuda()  # dropout 0.1: every step draws from the GPU's generator
    a, b, killed = tmp_path / "a", tmp_path / "b", tmp_path / "killed"
    straight = deterministic_run(tokens, recipe, [a, b])
    assert straight.returncode == 0, straight.stderr
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), (
        "two straight runs differ: this GPU run is not deterministic\n" + straight.stderr[-3000:]
    )
    # Step k fetches micro-batches 2k-1 and 2k: call 20 dies inside step 10's accumulation.
    dead = deterministic_run(tokens, recipe, [killed], kill_at_call=20)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    assert runs.latest_checkpoint(killed).name == "step_000008"
    resume = dataclasses.replace(recipe, pretrain=dataclasses.replace(recipe.pretrain, resume="auto"))  # fmt: skip
    resumed = deterministic_run(tokens, resume, [killed])
    assert resumed.returncode == 0, resumed.stderr
    wk = final_weights(killed)
    differ = [k for k in wa if not torch.equal(wa[k], wk[k])]
    assert not differ, f"resumed weights differ in {differ}\n{resumed.stderr[-3000:]}"
    assert losses(killed) == losses(a)


# ------------------------------------------------------------------ FSDP2 over NCCL

FSDP_ONE_RANK = """
import copy, json, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from scratchlm.config import ModelConfig, ParallelSettings, PretrainSettings
from scratchlm.device import autocast_for
from scratchlm.model.gpt import GPT
from scratchlm.train.distributed import apply_fsdp, backend_for, clip_grad_norm
from scratchlm.train.optim import make_optimizer

offload = sys.argv[1] == "offload"
p = ParallelSettings(cpu_offload=offload)
cuda = torch.device("cuda", 0)
torch.cuda.set_device(cuda)
backend = backend_for(p, cuda)  # NCCL, and gloo beside it for offloaded gradients
dist.init_process_group(backend, init_method="file://" + sys.argv[2], rank=0, world_size=1)
mesh = init_device_mesh("cuda", (1,), mesh_dim_names=("dp",))
torch.manual_seed(0)
cfg = ModelConfig(vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=64)
ref = GPT(cfg).to(cuda)
sharded = copy.deepcopy(ref)
apply_fsdp(sharded, mesh, p, cuda)
seen = {{}}
qkv = sharded.blocks[0].attn.qkv
def note_dtype(module, args):  # the weight as the matmul gets it
    seen.setdefault("compute_dtype", str(module.weight.dtype))
qkv.register_forward_pre_hook(note_dtype)
s = PretrainSettings(lr=1e-2)
opts = {{"ref": make_optimizer(ref, s, cuda), "sharded": make_optimizer(sharded, s, cuda)}}
out = {{"ref": [], "sharded": [], "norms": {{"ref": [], "sharded": []}}}}
xy = torch.randint(320, (4, 65), generator=torch.Generator().manual_seed(0)).to(cuda)
for step in range(4):  # the same batch each step: the loss must fall
    for name, model in (("ref", ref), ("sharded", sharded)):
        with autocast_for(cuda):
            _, loss = model(xy[:, :-1], xy[:, 1:])
        loss.backward()
        out["norms"][name].append(clip_grad_norm(list(model.parameters()), 1.0))
        opts[name].step()
        opts[name].zero_grad()
        out[name].append(loss.item())
w = sharded.blocks[0].attn.qkv.weight
out["compute_dtype"] = seen["compute_dtype"]
out["stored_dtype"] = str(w.dtype)
out["shard_device"] = w.to_local().device.type
dist.destroy_process_group()
print(json.dumps(out))
"""


@pytest.mark.parametrize("offload", ["gpu", "offload"])
def test_fsdp2_mixed_precision_on_one_rank_over_nccl(tmp_path, offload):
    script = FSDP_ONE_RANK.format()
    cmd = [sys.executable, "-c", script, offload, str(tmp_path / "store")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["compute_dtype"] == "torch.bfloat16"  # gathered in bf16 for compute
    assert out["stored_dtype"] == "torch.float32"  # kept (and stepped) in float32
    assert out["shard_device"] == ("cpu" if offload == "offload" else "cuda")
    for ref, sharded in zip(out["ref"], out["sharded"], strict=True):
        assert sharded == pytest.approx(ref, rel=BF16_RTOL)
    assert out["ref"][-1] < out["ref"][0] and out["sharded"][-1] < out["sharded"][0]


# ------------------------------------------------------------------ generation and serving

PROMPTS = ["The ", "def f(x):\n    return", "class", "Lists are mutable sequences"]


def greedy(max_new_tokens: int = 40) -> GenerateSettings:
    return GenerateSettings(temperature=0.0, max_new_tokens=max_new_tokens)


def test_generation_on_cuda_equals_the_cpu_greedy_text_in_float32(tiny_run):
    cpu = load_for_generation(tiny_run)
    gpu = load_for_generation(tiny_run, CUDA, torch.float32)
    assert next(gpu.model.parameters()).is_cuda
    # a batch of prompts of different lengths: left padding, masks and the cache on the GPU
    want = [r.stream.text for r in complete(cpu.model, cpu.tokenizer, PROMPTS, greedy())]
    got = [r.stream.text for r in complete(gpu.model, gpu.tokenizer, PROMPTS, greedy())]
    assert got == want
    one = [r.stream.text for r in complete(gpu.model, gpu.tokenizer, PROMPTS, greedy(), 1)]
    assert one == want  # one at a time, too
    bf16 = load_for_generation(tiny_run, CUDA, torch.bfloat16)
    rows = complete(bf16.model, bf16.tokenizer, PROMPTS, greedy(8))
    assert all(r.finish_reason in ("stop", "length") for r in rows)
    # tensor in, tensor out, seeded by a generator of the GPU's own
    idx = torch.tensor([gpu.tokenizer.encode("The ")], device=CUDA)
    draws = [
        sample(gpu.model, idx, 8, generator=torch.Generator(CUDA).manual_seed(3)) for _ in range(2)
    ]
    assert draws[0].is_cuda and torch.equal(draws[0], draws[1])


def test_the_server_answers_on_cuda(tiny_run):
    cpu = load_for_generation(tiny_run)
    want = complete(cpu.model, cpu.tokenizer, ["The "], greedy(16))[0].stream.text
    with running_server(tiny_run, "--device", "cuda", "--dtype", "float32") as url:
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["device"].startswith("cuda")
        body = {"prompt": "The ", "max_tokens": 16, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
    with running_server(tiny_run, "--device", "cuda") as url:  # bf16 by default on a GPU
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text


# ------------------------------------------------------------------ the chain


def test_the_chain_end_to_end_on_cuda(tmp_path):
    recipe = tiny_recipe(
        pretrain={"device": "cuda", "max_steps": 40, "eval_every": 20},
        model={"block_size": 64},
    )
    recipe = dataclasses.replace(
        recipe,
        finetune=dataclasses.replace(
            recipe.finetune, data="builtin:pydoc-qa", max_steps=5, device="cuda", eval_every=5
        ),
    )
    ws = Workspace(tmp_path, "tiny")
    results = {s: run_stage(s, recipe, ws, progress=False) for s in ("curate", "tokenizer", "tokenize", "pretrain", "finetune", "sample", "eval")}  # fmt: skip
    pre = results["pretrain"].summary
    assert pre.steps == 40 and pre.final_val_loss < pre.initial_val_loss
    records = [json.loads(x) for x in (ws.out("pretrain") / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    mfu = [r["mfu"] for r in records if "mfu" in r]
    assert mfu and all(0 < m < 1 for m in mfu)
    text = textwrap.shorten(str(results["sample"].summary), 200)
    assert results["finetune"].ran and results["eval"].ran, text
