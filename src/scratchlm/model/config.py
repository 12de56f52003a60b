"""The model's settings: one dataclass describes the transformer, and named presets fill it in.

GPT-2 (LayerNorm, learned positions, GELU, tied embeddings) and Llama (RMSNorm, RoPE, SwiGLU,
grouped-query attention) are two settings of the same code (model/gpt.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from scratchlm.errors import SettingsError
from scratchlm.settings import setting

_GPT2 = dict(
    norm="layernorm",
    position="learned",
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    block_size=1024,
)
_LLAMA = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2's exact layout (learned positions, LayerNorm with bias, GELU, tied embeddings).
    "gpt2-124m": _GPT2 | dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": _GPT2 | dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": _GPT2 | dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1.5b": _GPT2 | dict(n_layer=48, n_head=25, n_embd=1600),
    # Llama-style: RMSNorm, rotary positions, SwiGLU, grouped-query attention, no bias, untied.
    "llama-125m": _LLAMA | dict(n_layer=12, n_head=12, n_kv_head=4, n_embd=768, block_size=2048),
    "llama-1b": _LLAMA
    | dict(
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        mlp_hidden=8192,
        block_size=2048,
        rope_theta=500000.0,
    ),
    # Tiny shapes that train in minutes on a laptop CPU.
    "gpt2-tiny": _GPT2 | dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "llama-tiny": _LLAMA | dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=256),
}


@dataclass
class ModelConfig:
    """One decoder-only transformer. Every choice here is tested; presets fill in families."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = MODEL_PRESETS

    preset: str = setting(
        "", "start from a named shape (keys you set win): " + ", ".join(MODEL_PRESETS)
    )
    vocab_size: int = setting(0, "vocabulary size (0 = the tokenizer's)", min=0)
    block_size: int = setting(256, "context length in tokens", min=1)
    n_layer: int = setting(4, "transformer blocks", min=1)
    n_head: int = setting(4, "attention (query) heads", min=1)
    n_kv_head: int = setting(0, "key/value heads: 0 = n_head (MHA), fewer = GQA, 1 = MQA", min=0)
    n_embd: int = setting(128, "embedding width (divisible by n_head)", min=1)
    norm: Literal["layernorm", "rmsnorm"] = setting("layernorm", "normalisation layer")
    norm_eps: float = setting(1e-5, "epsilon of the norms", min=0.0)
    position: Literal["learned", "rope", "none"] = setting("learned", "position information")
    rope_theta: float = setting(10000.0, "RoPE base", min=1.0)
    mlp: Literal["gelu", "swiglu", "relu2"] = setting("gelu", "MLP activation")
    mlp_hidden: int = setting(
        0, "MLP width (0 = 4 x n_embd; SwiGLU: 8/3 x n_embd rounded to 64)", min=0
    )
    qk_norm: bool = setting(False, "RMS-normalise queries and keys per head")
    tie_embeddings: bool = setting(True, "share the token embedding and the LM head")
    bias: bool = setting(False, "bias in linear layers and layer norms")
    dropout: float = setting(0.0, "dropout probability", min=0.0, max=0.99)
    logit_softcap: float = setting(0.0, "cap logits to +-c with c*tanh(x/c) (0 = off)", min=0.0)
    init_std: float = setting(0.02, "std of the normal initialisation", min=0.0)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise SettingsError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.kv_heads:
            raise SettingsError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise SettingsError(f"rope needs an even head size; n_embd / n_head = {self.head_dim}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # same parameter count as a 4x MLP with two matrices
            return -(-8 * self.n_embd // 3 // 64) * 64
        return 4 * self.n_embd
