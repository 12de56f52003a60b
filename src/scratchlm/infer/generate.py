"""Sampling text from a trained run: temperature and top-k over the model's next-token logits."""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.config import GenerateSettings, ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer
from scratchlm.train.checkpoint import latest_checkpoint, load_model_config, load_weights


def load_run(run_dir: Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    """The model of a run folder's latest checkpoint and the run's tokenizer, ready to sample."""
    cfg = load_model_config(run_dir)
    model = GPT(cfg)
    load_weights(model, latest_checkpoint(run_dir))
    return model.to(device).eval(), load_tokenizer(run_dir / "tokenizer.json")


def untrained_model(cfg: ModelConfig, seed: int) -> GPT:
    """The same architecture at initialisation: the 'before' of a before/after comparison."""
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@torch.no_grad()
def sample(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append `max_new_tokens` tokens to each row of `idx` (B, T). temperature 0 is greedy."""
    for _ in range(max_new_tokens):
        context = idx[:, -model.cfg.block_size :]
        logits, _ = model(context)
        logits = logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, nxt.to(idx.device)], dim=1)
    return idx


def generate_text(model: GPT, tok: Tokenizer, prompt: str, s: GenerateSettings) -> str:
    """The prompt followed by what the model writes after it (at most `s.max_new_tokens`)."""
    device = next(model.parameters()).device
    ids = tok.encode(prompt) or [tok.eot_id]  # an empty prompt starts as a new document would
    gen = torch.Generator(device=device).manual_seed(s.seed)
    out = sample(
        model, torch.tensor([ids], device=device), s.max_new_tokens, s.temperature, s.top_k, gen
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
