"""A decoder-only transformer, one small class per concept.

    tokens -> token embedding (+ learned positions) -> N x Block -> norm -> LM head -> logits
    Block:  x = x + Attention(Norm(x));  x = x + MLP(Norm(x))        (pre-norm residuals)

One `ModelConfig` describes it: GPT-2 (LayerNorm, learned positions, GELU, tied embeddings)
and Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) are two settings of the same code.
The model is written for one device and knows nothing of training, data or torch.distributed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.cache import Cache
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import MLP, make_norm, rope_tables


def _packed_positions_and_mask(doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions restarting at each new document, and a causal mask within documents only."""
    T = doc.size(1)
    steps = torch.arange(T, device=doc.device).expand_as(doc)
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    first = torch.where(starts, steps, 0).cummax(dim=-1).values  # where each token's doc began
    causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()
    mask = causal[None] & (doc[:, :, None] == doc[:, None, :])
    return steps - first, mask[:, None]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the tokenizer's vocab size)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)  # derived, never saved
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, init_std) for matrices, zero biases, unit norm gains;
        the projections that write into the residual stream scaled by 1/sqrt(2 * layers), so
        the stream's variance does not grow with depth."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scale = math.sqrt(2 * self.cfg.n_layer) if name.endswith("proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std / scale)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _positions_and_mask(
        self,
        T: int,
        device: torch.device,
        attention_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions (1 or B, T) and the attention mask (B, 1, T, T) or None, without a cache."""
        if document_ids is not None:
            return _packed_positions_and_mask(document_ids)
        if attention_mask is None:
            return torch.arange(T, device=device)[None], None  # training: plain causal
        keys = attention_mask.bool()
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)
        steps = torch.arange(T, device=device)
        mask = (steps[:, None] >= steps[None])[None] & keys[:, None, :]
        # A padding query sees no real key; let it see itself so softmax stays finite.
        mask |= steps[:, None] == steps[None]
        return positions, mask[:, None]

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden state of every position, (B, T, C). `document_ids`
        (B, T) marks several examples packed in one row: each attends only to itself and
        starts at position 0, exactly as if it were alone."""
        B, T = idx.shape
        block = self.cfg.block_size
        if cache is not None:  # the cache knows where each row stands and who sees what
            positions, mask = cache.begin(idx, attention_mask), None
        else:
            if idx.size(1) > block:
                raise ValueError(f"{T} positions are more than block_size={block}")
            positions, mask = self._positions_and_mask(T, idx.device, attention_mask, document_ids)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        rope = None
        if self.cfg.position == "rope":
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if cache is not None:
            cache.end(T)
        return self.ln_f(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states. Generation calls it on the last position only:
        at a 50k vocabulary the LM head is the largest matmul of a prompt's pass."""
        logits = self.lm_head(h)
        if self.cfg.logit_softcap:  # Gemma 2: keeps logits in (-c, c) smoothly
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position; with `targets`, also the mean next-token cross-entropy
        (targets of -1 are ignored)."""
        logits = self.head(self.hidden_states(idx, cache, attention_mask, document_ids))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, tied weights counted once; learned position embeddings excluded by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the weights plus 12 L C T for the attention scores
        (PaLM, appendix B), with N the non-embedding parameters."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size
