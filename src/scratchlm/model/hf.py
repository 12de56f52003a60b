"""The mapping between our GPT and HF transformers' GPT-2 and Llama, in both directions.

No custom code on either side: the weights are renamed (and, for GPT-2's Conv1D layers,
transposed), the configs translated key by key. This module only maps; export/hf.py writes
folders, runs/ reads them.

    hf_family(cfg)                      "gpt2" or "llama" (or why neither fits)
    hf_state_dict(sd, cfg)              our weights under HF names
    hf_config(cfg, family, eot)         config.json's content
    read_hf(folder)                     (ModelConfig, our state dict) from an HF folder
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from scratchlm.errors import StageError
from scratchlm.model.config import ModelConfig

# ------------------------------------------------------------------ which HF family a config is


def hf_family(cfg: ModelConfig) -> str:
    """'gpt2' or 'llama', or a StageError naming the settings that neither family has."""
    gpt2 = {"norm": "layernorm", "position": "learned", "mlp": "gelu"}  # no bias = zero bias
    llama = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu"}
    common = {"qk_norm": False, "logit_softcap": 0.0}
    off = {k: v for k, v in common.items() if getattr(cfg, k) != v}

    def mismatches(want: dict[str, Any]) -> dict[str, Any]:
        return {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}

    if not off and not mismatches(gpt2) and cfg.kv_heads == cfg.n_head:
        return "gpt2"
    if not off and not mismatches(llama):
        return "llama"
    raise StageError(
        "this model has no HF transformers equivalent without custom code: GPT-2 needs "
        f"{gpt2} and full heads, Llama needs {llama}; both need {common}. This one differs in "
        f"{mismatches(gpt2) | off} (GPT-2) and {mismatches(llama) | off} (Llama)"
    )


# ------------------------------------------------------------------ name maps, ours -> HF

# Our linear layers and their names in HF GPT-2, where they are OpenAI's Conv1D: (in, out) weights.
GPT2_LINEARS = (
    ("attn.qkv", "attn.c_attn"),
    ("attn.proj", "attn.c_proj"),
    ("mlp.fc", "mlp.c_fc"),
    ("mlp.proj", "mlp.c_proj"),
)


def _with_zero_biases(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    layers = ("ln_1", "ln_2", "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    names = ["ln_f"] + [f"blocks.{i}.{m}" for i in range(cfg.n_layer) for m in layers]
    return sd | {f"{n}.bias": torch.zeros(sd[f"{n}.weight"].size(0)) for n in names}


def _gpt2_state(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if not cfg.bias:  # HF GPT-2 always has biases; a model without them equals one with zeros
        sd = _with_zero_biases(sd, cfg)
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for n in ("ln_1", "ln_2"):
            out[f"{hf}{n}.weight"], out[f"{hf}{n}.bias"] = (
                sd[f"{ours}{n}.weight"],
                sd[f"{ours}{n}.bias"],
            )
        # HF GPT-2 keeps OpenAI's Conv1D layers: weight is (in, out), the transpose of Linear's.
        for a, b in GPT2_LINEARS:
            out[f"{hf}{b}.weight"] = sd[f"{ours}{a}.weight"].t()
            out[f"{hf}{b}.bias"] = sd[f"{ours}{a}.bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (
        sd["ln_f.weight"],
        sd["ln_f.bias"],
    )
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_state(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        out[f"{hf}input_layernorm.weight"] = sd[f"{ours}ln_1.weight"]
        out[f"{hf}post_attention_layernorm.weight"] = sd[f"{ours}ln_2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            qw, kw, vw = sd[f"{ours}attn.qkv.{suffix}"].split([q, kv, kv])
            (
                out[f"{hf}self_attn.q_proj.{suffix}"],
                out[f"{hf}self_attn.k_proj.{suffix}"],
                out[f"{hf}self_attn.v_proj.{suffix}"],
            ) = qw, kw, vw
            out[f"{hf}self_attn.o_proj.{suffix}"] = sd[f"{ours}attn.proj.{suffix}"]
            gate, up = sd[f"{ours}mlp.fc.{suffix}"].chunk(2)
            out[f"{hf}mlp.gate_proj.{suffix}"], out[f"{hf}mlp.up_proj.{suffix}"] = gate, up
            out[f"{hf}mlp.down_proj.{suffix}"] = sd[f"{ours}mlp.proj.{suffix}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def hf_config(cfg: ModelConfig, family: str, eot: int | None) -> dict[str, Any]:
    common = {
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if family == "gpt2":
        return common | {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.hidden,
            "activation_function": "gelu_new",  # the tanh approximation, which we use too
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps,
        }
    return common | {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
    }


def hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our GPT's state dict under HF's names and layouts (GPT2LMHeadModel or LlamaForCausalLM)."""
    return _gpt2_state(sd, cfg) if hf_family(cfg) == "gpt2" else _llama_state(sd, cfg)


# ------------------------------------------------------------------ HF -> ours


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise StageError(f"{folder}: no model.safetensors, sharded safetensors or pytorch_model.bin")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    kind = hf.get("model_type")
    if kind == "gpt2":
        n_embd = hf["n_embd"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned", mlp="gelu",
            mlp_hidden=hf.get("n_inner") or 4 * n_embd, bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
        )  # fmt: skip
    if kind == "llama":
        rope = hf.get("rope_parameters") or {}
        if (rope.get("rope_type") or "default") != "default" or hf.get("rope_scaling"):
            raise StageError(
                "this Llama uses scaled RoPE (e.g. Llama 3.1's); only plain RoPE is supported"
            )
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise StageError(
                "attention_bias and mlp_bias differ; scratchlm's `bias` setting covers both"
            )
        n_head = hf["num_attention_heads"]
        if hf.get("head_dim", hf["hidden_size"] // n_head) * n_head != hf["hidden_size"]:
            raise StageError("head_dim x num_attention_heads must equal hidden_size")
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
            n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=hf["hidden_size"],
            norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), position="rope",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), mlp="swiglu",
            mlp_hidden=hf["intermediate_size"], bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02),
        )  # fmt: skip
    raise StageError(f"HF model_type {kind!r}: only gpt2 and llama can be imported")


def _from_gpt2(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}  # GPT2Model checkpoints lack it
    sd = {
        "wte.weight": hf["wte.weight"],
        "wpe.weight": hf["wpe.weight"],
        "ln_f.weight": hf["ln_f.weight"],
        "ln_f.bias": hf["ln_f.bias"],
    }
    for i in range(cfg.n_layer):
        ours, h = f"blocks.{i}.", f"h.{i}."
        for n in ("ln_1", "ln_2"):
            sd[f"{ours}{n}.weight"], sd[f"{ours}{n}.bias"] = (
                hf[f"{h}{n}.weight"],
                hf[f"{h}{n}.bias"],
            )
        for a, b in GPT2_LINEARS:
            sd[f"{ours}{a}.weight"] = hf[f"{h}{b}.weight"].t().contiguous()
            sd[f"{ours}{a}.bias"] = hf[f"{h}{b}.bias"]
    sd["lm_head.weight"] = hf.get("lm_head.weight", sd["wte.weight"])
    return sd


def _from_llama(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {"wte.weight": hf["model.embed_tokens.weight"], "ln_f.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layer):
        ours, h = f"blocks.{i}.", f"model.layers.{i}."
        sd[f"{ours}ln_1.weight"] = hf[f"{h}input_layernorm.weight"]
        sd[f"{ours}ln_2.weight"] = hf[f"{h}post_attention_layernorm.weight"]
        for s in ("weight", "bias") if cfg.bias else ("weight",):
            sd[f"{ours}attn.qkv.{s}"] = torch.cat([hf[f"{h}self_attn.{p}_proj.{s}"] for p in "qkv"])
            sd[f"{ours}attn.proj.{s}"] = hf[f"{h}self_attn.o_proj.{s}"]
            sd[f"{ours}mlp.fc.{s}"] = torch.cat(
                [hf[f"{h}mlp.gate_proj.{s}"], hf[f"{h}mlp.up_proj.{s}"]]
            )
            sd[f"{ours}mlp.proj.{s}"] = hf[f"{h}mlp.down_proj.{s}"]
    sd["lm_head.weight"] = hf.get("lm_head.weight", sd["wte.weight"])
    return sd


def read_hf(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Our ModelConfig and GPT state dict from an HF GPT-2 or Llama folder (local files only)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise StageError(f"{folder}: no config.json; expected a folder saved by save_pretrained")
    hf_cfg = json.loads((folder / "config.json").read_text())
    cfg = config_from_hf(hf_cfg)
    weights = {k: v.float() for k, v in read_hf_weights(folder).items()}
    sd = _from_gpt2(weights, cfg) if cfg.position == "learned" else _from_llama(weights, cfg)
    return cfg, sd
