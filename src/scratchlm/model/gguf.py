"""The mapping between our GPT and llama.cpp's GGUF models: arch `llama` or `gpt2`.

The families are model/hf.py's: what HF transformers loads as LlamaForCausalLM, llama.cpp
loads as arch `llama`; GPT2LMHeadModel as `gpt2`. This module only maps (names, layouts,
hyperparameter keys); export/gguf.py writes the file.

A GGUF matrix of ggml shape [in, out] holds the same bytes as a torch (out, in) tensor, so
nn.Linear weights go in as they are. Two things differ from our layout:

- RoPE's pairing. llama.cpp's `llama` arch rotates adjacent pairs (x0, x1), (x2, x3), ... of
  each head; we (and HF Llama) rotate (x_i, x_{i+d/2}). Reordering the rows of q and k within
  each head, first half to even places and second half to odd ones, turns one into the other:
  q and k move alike, so every attention score is unchanged. This is the permutation
  llama.cpp's convert_hf_to_gguf.py applies to HF Llama weights.
- Separate tensors: `llama` keeps q, k, v and SwiGLU's gate and up apart (we fuse them);
  `gpt2` keeps qkv fused as we do, and needs every bias (zeros for a model without them).

    gguf_arch(cfg)             "llama" or "gpt2", or why neither fits
    gguf_tensors(sd, cfg)      {GGUF name: tensor} in llama.cpp's layout
    gguf_hparams(cfg)          {GGUF key: value} of the architecture's hyperparameters
"""

from __future__ import annotations

from typing import Any

import torch

from scratchlm.model.config import ModelConfig
from scratchlm.model.hf import hf_family


def gguf_arch(cfg: ModelConfig) -> str:
    """llama.cpp's architecture name for this model (model/hf.py's family)."""
    return hf_family(cfg)


def rope_pairs_adjacent(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of q or k (or their bias) reordered per head from half-split RoPE pairs
    (i, i + d/2) to adjacent ones (2i, 2i + 1)."""
    d = w.size(0) // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _llama_block(sd: dict[str, torch.Tensor], cfg: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    ours, blk = f"blocks.{i}.", f"blk.{i}."
    out = {
        f"{blk}attn_norm.weight": sd[f"{ours}ln_1.weight"],
        f"{blk}ffn_norm.weight": sd[f"{ours}ln_2.weight"],
    }
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for suffix in ("weight", "bias") if cfg.bias else ("weight",):
        wq, wk, wv = sd[f"{ours}attn.qkv.{suffix}"].split([q, kv, kv])
        out[f"{blk}attn_q.{suffix}"] = rope_pairs_adjacent(wq, cfg.n_head)
        out[f"{blk}attn_k.{suffix}"] = rope_pairs_adjacent(wk, cfg.kv_heads)
        out[f"{blk}attn_v.{suffix}"] = wv
        out[f"{blk}attn_output.{suffix}"] = sd[f"{ours}attn.proj.{suffix}"]
        gate, up = sd[f"{ours}mlp.fc.{suffix}"].chunk(2)
        out[f"{blk}ffn_gate.{suffix}"], out[f"{blk}ffn_up.{suffix}"] = gate, up
        out[f"{blk}ffn_down.{suffix}"] = sd[f"{ours}mlp.proj.{suffix}"]
    return out


def _gpt2_block(sd: dict[str, torch.Tensor], cfg: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    ours, blk = f"blocks.{i}.", f"blk.{i}."
    names = {
        "ln_1": "attn_norm",
        "attn.qkv": "attn_qkv",
        "attn.proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.fc": "ffn_up",
        "mlp.proj": "ffn_down",
    }
    out = {}
    for a, b in names.items():
        weight = sd[f"{ours}{a}.weight"]
        out[f"{blk}{b}.weight"] = weight
        # llama.cpp's gpt2 requires every bias; a model without them equals one with zeros
        out[f"{blk}{b}.bias"] = sd.get(f"{ours}{a}.bias", torch.zeros(weight.size(0)))
    return out


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our GPT's state dict under GGUF names, in llama.cpp's layout, in file order. A tied
    LM head is left out: llama.cpp reads the token embedding in its place."""
    arch = gguf_arch(cfg)
    out = {"token_embd.weight": sd["wte.weight"]}
    if arch == "gpt2":
        out["position_embd.weight"] = sd["wpe.weight"]
    block = _gpt2_block if arch == "gpt2" else _llama_block
    for i in range(cfg.n_layer):
        out |= block(sd, cfg, i)
    out["output_norm.weight"] = sd["ln_f.weight"]
    if arch == "gpt2":
        out["output_norm.bias"] = sd.get("ln_f.bias", torch.zeros(cfg.n_embd))
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def gguf_hparams(cfg: ModelConfig) -> dict[str, Any]:
    """The `<arch>.*` keys llama.cpp reads to build the model (ints are uint32 in the file)."""
    arch = gguf_arch(cfg)
    keys: dict[str, Any] = {
        "context_length": cfg.block_size,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.hidden,
        "attention.head_count": cfg.n_head,
        "vocab_size": cfg.vocab_size,
    }
    if arch == "gpt2":
        keys["attention.layer_norm_epsilon"] = float(cfg.norm_eps)
    else:
        keys |= {
            "attention.head_count_kv": cfg.kv_heads,
            "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
            "rope.freq_base": float(cfg.rope_theta),
            "rope.dimension_count": cfg.head_dim,
        }
    return {f"{arch}.{k}": v for k, v in keys.items()}
