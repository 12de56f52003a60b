"""Exact interchange with HF transformers, both ways, on models made in the test (no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from scratchlm import runs
from scratchlm.cli import main
from scratchlm.config import ModelConfig, TokenizerSettings, build
from scratchlm.errors import StageError
from scratchlm.export.hf import export_hf
from scratchlm.infer.generate import sample
from scratchlm.model.gpt import GPT
from scratchlm.model.hf import hf_family, read_hf
from scratchlm.tokenizer.formats import export_tokenizer
from scratchlm.tokenizer.train import train_tokenizer

VOCAB = 300


def hf_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_head=4,
            n_embd=64,
            vocab_size=VOCAB,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    llama = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    vocab_size=VOCAB, max_position_embeddings=64, rope_theta=500.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    )  # fmt: skip
    with torch.no_grad():  # HF zeroes biases and sets norms to one at init: randomise them all
        for name, p in [*gpt2.named_parameters(), *llama.named_parameters()]:
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


def hf_greedy(hf: torch.nn.Module, idx: torch.Tensor, n: int) -> torch.Tensor:
    hf.generation_config.eos_token_id = None  # run the full n tokens
    hf.generation_config.pad_token_id = 0
    return hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False, use_cache=True
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_import_gives_hfs_logits_and_greedy_text(family, tmp_path):
    hf = hf_models()[family]
    hf.save_pretrained(tmp_path)
    cfg, state = read_hf(tmp_path)
    ours = GPT(cfg).eval()
    ours.load_state_dict(state)
    idx = torch.randint(VOCAB, (3, 40))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max() <= 1e-4
    prompt = idx[:2, :8]
    assert torch.equal(sample(ours, prompt, 16, temperature=0), hf_greedy(hf, prompt, 16))


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("gpt2-tiny", {}),
        ("gpt2-tiny", {"bias": False, "tie_embeddings": False}),
        ("llama-tiny", {}),
        ("llama-tiny", {"n_kv_head": 1, "bias": True}),
    ],
)
def test_export_loads_in_transformers_with_no_custom_code(preset, extra, tmp_path):
    from pydoc_data.topics import topics

    tok = train_tokenizer(
        list(topics.values())[:20], TokenizerSettings(vocab_size=VOCAB), progress=False
    )
    torch.manual_seed(1)
    ours = GPT(
        build(ModelConfig, {"preset": preset, "vocab_size": VOCAB, "block_size": 64, "n_layer": 2})
    ).eval()
    export_hf(ours, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == (
        "GPT2LMHeadModel" if preset.startswith("gpt2") else "LlamaForCausalLM"
    )
    idx = torch.randint(VOCAB, (2, 50))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max() <= 1e-4
    prompt = idx[:, :6]
    assert torch.equal(sample(ours, prompt, 12, temperature=0), hf_greedy(hf, prompt, 12))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "The for statement is used to iterate"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf.config.eos_token_id == tok.eot_id


def test_run_folder_round_trip_through_the_cli(tmp_path):
    """HF folder -> `scratchlm import hf` -> run folder -> `scratchlm export hf` -> HF folder."""
    from pydoc_data.topics import topics

    hf = hf_models()["llama"]
    hf.save_pretrained(tmp_path / "hf")
    tok = train_tokenizer(
        list(topics.values())[:20], TokenizerSettings(vocab_size=VOCAB - 8), progress=False
    )
    export_tokenizer(tok, tmp_path / "hf")
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    run_tok = runs.load_model(tmp_path / "run").tokenizer
    assert run_tok.encode("for x in y") == tok.encode("for x in y")
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(VOCAB, (2, 30))
    with torch.no_grad():
        assert (back(idx).logits - hf(idx).logits).abs().max() <= 1e-5
    assert (
        main(
            [
                "generate",
                str(tmp_path / "run"),
                "--prompt",
                "for",
                "--set",
                "generate.max_new_tokens=5",
            ]
        )
        == 0
    )


def test_models_without_an_hf_equivalent_are_refused_with_the_reason():
    with pytest.raises(StageError, match="qk_norm"):
        hf_family(
            ModelConfig(vocab_size=10, norm="rmsnorm", position="rope", mlp="swiglu", qk_norm=True)
        )
    with pytest.raises(StageError, match="'mlp': 'relu2'"):
        hf_family(ModelConfig(vocab_size=10, mlp="relu2", bias=True))
    assert hf_family(build(ModelConfig, {"preset": "gpt2-124m"})) == "gpt2"


def test_import_refuses_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(StageError, match="only gpt2 and llama"):
        read_hf(tmp_path)
