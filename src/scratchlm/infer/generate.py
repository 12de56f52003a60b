"""Sampling text from a trained run: temperature and top-k over the model's next-token logits."""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.config import GenerateSettings, ModelConfig
from scratchlm.model.cache import KVCache
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.train.checkpoint import load_run


def untrained_model(cfg: ModelConfig, seed: int) -> GPT:
    """The same architecture at initialisation: the 'before' of a before/after comparison."""
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
    vocab_limit: int | None,
) -> torch.Tensor:
    """The next token of each row from its last-position logits (B, V)."""
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        # A model's vocabulary may be padded past the tokenizer's; those ids mean nothing.
        logits = logits.clone()
        logits[:, vocab_limit:] = float("-inf")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def sample(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Append `max_new_tokens` tokens to each row of `idx` (B, T); temperature 0 is greedy.

    Rows may be left-padded prompts (`attention_mask` marks real tokens). While the text fits
    the context, the prompt is read once into a KV cache and each new token costs one step;
    beyond it, the model re-reads the last block_size tokens each step.
    """
    B, T = idx.shape
    cached = T + max_new_tokens <= model.cfg.block_size
    if cached:
        cache = KVCache(model.cfg, B, device=idx.device, dtype=next(model.parameters()).dtype)
        logits, _ = model(idx, cache=cache, attention_mask=attention_mask)
    mask = attention_mask.bool() if attention_mask is not None else None
    window = model.cfg.block_size
    for step in range(max_new_tokens):
        if not cached:
            logits, _ = model(
                idx[:, -window:], attention_mask=None if mask is None else mask[:, -window:]
            )
        nxt = _pick(logits[:, -1], temperature, top_k, generator, vocab_limit)
        idx = torch.cat([idx, nxt.to(idx.device)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        if cached and step < max_new_tokens - 1:
            logits, _ = model(nxt, cache=cache)
    return idx


def generate_text(model: GPT, tok: Tokenizer, prompt: str, s: GenerateSettings) -> str:
    """The prompt followed by what the model writes after it (at most `s.max_new_tokens`)."""
    device = next(model.parameters()).device
    ids = tok.encode(prompt) or [tok.eot_id]  # an empty prompt starts as a new document would
    gen = torch.Generator(device=device).manual_seed(s.seed)
    prompt_ids = torch.tensor([ids], device=device)
    out = sample(
        model, prompt_ids, s.max_new_tokens, s.temperature, s.top_k, gen, vocab_limit=tok.vocab_size
    )
    new = out[0, len(ids) :].tolist()
    if tok.eot_id in new:  # the model ended the document
        new = new[: new.index(tok.eot_id)]
    return prompt + tok.decode(new)


def before_after_samples(
    run_dir: Path, s: GenerateSettings, init_seed: int
) -> list[dict[str, str]]:
    """For each prompt: what the untrained model writes, and what the trained one writes."""
    model, tok = load_run(run_dir)
    before = untrained_model(model.cfg, init_seed)
    return [
        {
            "prompt": p,
            "untrained": generate_text(before, tok, p, s),
            "trained": generate_text(model, tok, p, s),
        }
        for p in s.prompts
    ]
