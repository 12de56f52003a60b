"""int8 weights (model/quantize.py) and `generate.quantize=int8` / `--quantize int8` in generate,
chat, serve and eval, on real models and a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pydoc_data.topics import topics

import httpx
import pytest
import torch
import torch.nn as nn
from serving import running_server

from scratchlm import runs
from scratchlm.cli import main
from scratchlm.config import GenerateSettings, ModelConfig, build
from scratchlm.errors import SettingsError
from scratchlm.infer.generate import generate_text
from scratchlm.infer.layout import TransposedLinear, load_for_generation
from scratchlm.model.gpt import GPT
from scratchlm.model.quantize import Int8Linear, quantize_int8, quantize_rows


def test_rows_keep_their_own_scale_and_round_to_the_nearest_step():
    w = torch.randn(6, 64)
    w[2] *= 1000  # one outlying row does not coarsen the others
    w[4] = 0  # an all-zero row stays finite and zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert torch.allclose(scale, w.abs().amax(1).clamp(min=1e-12) / 127)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6 * scale[:, None]).all()
    assert not q[4].any() and torch.isfinite(scale).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (3, 5, 96)])
def test_int8_linear_multiplies_by_its_int8_weights(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    layer = Int8Linear(linear)
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_int8.shape == (40, 96)
    x = torch.randn(shape)
    want = x @ layer.dequantized().T + (linear.bias.detach() if bias else 0)
    got = layer(x)
    assert got.shape == (*shape[:-1], 40) and got.dtype == torch.float32
    assert (layer.dequantized() - linear.weight).abs().max() > 0  # it really is rounded
    error = (got - want).abs().max() / want.abs().max()
    if x.numel() == 96:  # one row: the compiled loop, float32 activations
        assert error <= 1e-5
    else:  # several: _weight_int8pack_mm, bfloat16 activations (~3 significant digits)
        assert error <= 1e-2


def test_without_a_cpp_compiler_one_row_falls_back_to_int8pack(tmp_path):
    """torch.compile needs a C++ compiler; on a machine without one, int8 still works."""
    code = """
import warnings, torch, torch.nn as nn, torch._inductor.config as inductor
inductor.cpp.cxx = ("no-such-c++",)
from scratchlm.model.quantize import Int8Linear, one_row_kernel
layer = Int8Linear(nn.Linear(64, 32))
x = torch.randn(1, 64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = layer(x)
want = x @ layer.dequantized().T + layer.bias
assert not one_row_kernel.available, "the compiler was found"
assert any("torch.compile failed" in str(w.message) for w in caught)
assert (y - want).abs().max() <= 1e-2 * want.abs().max()
"""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}  # nothing compiled before
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_linear_of_the_model_becomes_int8_and_the_logits_stay_close():
    torch.manual_seed(0)
    cfg = build(ModelConfig, {"preset": "llama-tiny", "vocab_size": 300, "n_layer": 2})
    model = GPT(cfg).eval()
    idx = torch.randint(300, (2, 24))
    with torch.no_grad():
        want = model(idx)[0]
        wte = model.wte.weight.clone()
        quantize_int8(model)
        got = model(idx)[0]
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Linear | Int8Linear)}
    assert kinds == {Int8Linear} and isinstance(model.lm_head, Int8Linear)
    assert torch.equal(model.wte.weight, wte)  # the embedding keeps its float rows
    assert (got - want).abs().max() <= 0.03 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_a_layer_the_kernel_cannot_take_stays_float():
    model = nn.Sequential(nn.Linear(48, 24), nn.Linear(24, 16))  # 24 is not a multiple of 16
    quantize_int8(model)
    assert isinstance(model[0], Int8Linear) and type(model[1]) is nn.Linear


def greedy(folder, quantize: str, prompt: str, n: int = 40) -> str:
    loaded = load_for_generation(folder, quantize=quantize)
    settings = GenerateSettings(temperature=0, max_new_tokens=n, quantize=quantize)
    return generate_text(loaded.model, loaded.tokenizer, prompt, settings)


PROMPTS = ["The ", "class ", "def f(x):\n    ", "import ", "for i in ", "A ", "If the "]


@pytest.fixture(scope="module")
def untrained_run(tiny_run, tmp_path_factory):
    """tiny_run's settings and tokenizer with random weights, larger than at initialisation:
    a text that wanders, so int8's rounding shows in it soon (a trained tiny model's margins
    hide it)."""
    run = tmp_path_factory.mktemp("untrained") / "tiny"
    runs.write_config(run, runs.read_config(tiny_run))
    runs.save_tokenizer(run, tiny_run / runs.TOKENIZER)
    torch.manual_seed(0)
    model = GPT(runs.model_config(tiny_run))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" not in name:
                p.mul_(8)
    runs.save_checkpoint(run, 0, model, {})
    return run


def test_generate_chat_and_serve_run_the_int8_model(untrained_run):
    tiny_run = untrained_run
    loaded = load_for_generation(tiny_run, quantize="int8")
    assert isinstance(loaded.model.lm_head, Int8Linear)
    assert not any(isinstance(m, TransposedLinear | nn.Linear) for m in loaded.model.modules())
    # a prompt whose int8 text differs from float32's shows which weights a command ran
    prompt = next((p for p in PROMPTS if greedy(tiny_run, "int8", p) != greedy(tiny_run, "none", p)), None)  # fmt: skip
    assert prompt is not None, "int8 and float32 agree on every prompt: pick others"
    want = greedy(tiny_run, "int8", prompt)
    cli = ["generate", str(tiny_run), "--prompt", prompt, "--quantize", "int8", "--set", "generate.temperature=0", "--set", "generate.max_new_tokens=40"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "scratchlm", *cli], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    chat = ["chat", str(tiny_run), "--quantize", "int8", "--set", "generate.max_new_tokens=4"]
    r = subprocess.run([sys.executable, "-m", "scratchlm", *chat], input="Hi\n/exit\n", capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "assistant> " in r.stdout, r.stderr
    with running_server(tiny_run, "--quantize", "int8") as url:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 40, "temperature": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    assert prompt + reply["choices"][0]["text"] == want


def test_a_bad_or_impossible_quantize_setting_stops_before_any_work(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "--set", "generate.quantize=int4"]) == 2
    assert "generate.quantize" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="CPU"):
        runs.load_model(tiny_run, device="meta", quantize="int8")


def test_eval_scores_the_int8_model_within_one_percent(tiny_run, tmp_path):
    run = tmp_path / "run"
    runs.write_config(run, runs.read_config(tiny_run))
    runs.save_tokenizer(run, tiny_run / runs.TOKENIZER)
    runs.save_checkpoint(run, 1, runs.load_model(tiny_run).model, {})
    text = tmp_path / "heldout.txt"
    text.write_text("\n\n".join(list(topics.values())[-10:]))
    scores = {}
    for quantize in ("none", "int8"):
        args = ["eval", str(run), "--text", str(text), "--task", "shuffle", "--quantize", quantize, "--set", "eval.max_items=20"]  # fmt: skip
        assert main(args) == 0
        scores[quantize] = json.loads((run / "eval.json").read_text())["perplexity"][
            "bits_per_byte"
        ]
    assert scores["int8"] != scores["none"]  # the int8 model was the one scored
    assert abs(scores["int8"] / scores["none"] - 1) < 0.01
