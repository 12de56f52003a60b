"""Direct Preference Optimisation (Rafailov et al., 2023): learn from (prompt, chosen, rejected)
without a reward model.

    reward(y)  = beta * (log p_policy(y | prompt) - log p_reference(y | prompt))
    loss       = -log sigmoid(reward(chosen) - reward(rejected))

The reference is the model before tuning, frozen. Its log-probabilities never change, so they
are computed once, up front, for every pair: no second model in memory, and with LoRA the
"base without adapters" is simply the model before the adapters were added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.finetune import records, sft
from scratchlm.finetune.base import Base, save_chat_run, vocab_params, with_chat_tokens
from scratchlm.finetune.loop import EpochBatches, fit, total_steps, use_lora
from scratchlm.finetune.summaries import DPOSummary
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass
class Pair:
    chosen: list[int]  # prompt + chosen reply + <|end|>
    rejected: list[int]
    prompt_len: int  # tokens of the prompt; the reply starts here
    ref_chosen: float = 0.0  # the reference model's log p(reply | prompt)
    ref_rejected: float = 0.0


def encode(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    prompt: Sequence[dict[str, str]],
    chosen: str,
    rejected: str,
    max_len: int,
) -> tuple[Pair | None, bool]:
    """A pair of sequences sharing their prompt, cut to `max_len` tokens (None when the
    prompt leaves no room for a reply), and whether anything was cut."""
    ids, _ = template.render(tokenizer, prompt, add_generation_prompt=True)
    end = tokenizer.special_tokens[template.end]
    a = ids + tokenizer.encode(chosen) + [end]
    b = ids + tokenizer.encode(rejected) + [end]
    if len(ids) >= max_len:
        return None, True
    cut = max(len(a), len(b)) > max_len
    return Pair(a[:max_len], b[:max_len], len(ids)), cut


def _batch(
    seqs: Sequence[list[int]], prompt_lens: Sequence[int], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and targets that are -1 except on reply tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        idx[i, : len(s)] = torch.tensor(s)
        tgt[i, p - 1 : len(s) - 1] = torch.tensor(s[p:])  # position t predicts token t + 1
    return idx.to(device), tgt.to(device)


def reply_logprobs(
    model: torch.nn.Module, seqs: Sequence[list[int]], prompt_lens: Sequence[int], pad_id: int
) -> torch.Tensor:
    """log p(reply | prompt) of each sequence, summed over the reply's tokens."""
    device = next(model.parameters()).device
    idx, tgt = _batch(seqs, prompt_lens, pad_id, device)
    logits, _ = model(idx)  # right padding: causal attention never lets a real token see it
    logp = logits.float().log_softmax(-1)
    picked = logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * (tgt != -1)).sum(-1)


@torch.no_grad()
def add_reference(model: torch.nn.Module, pairs: list[Pair], pad_id: int, batch_size: int) -> None:
    """Fill in the reference log-probabilities with the model as it is now (before tuning)."""
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k : k + batch_size]
        lens = [p.prompt_len for p in chunk]
        chosen = reply_logprobs(model, [p.chosen for p in chunk], lens, pad_id)
        rejected = reply_logprobs(model, [p.rejected for p in chunk], lens, pad_id)
        for p, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            p.ref_chosen, p.ref_rejected = c, r


def loss(
    model: torch.nn.Module, pairs: Sequence[Pair], beta: float, pad_id: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss of a batch of pairs, with reward accuracy and mean margin."""
    lens = [p.prompt_len for p in pairs]
    # chosen and rejected in one forward pass
    logp = reply_logprobs(
        model, [p.chosen for p in pairs] + [p.rejected for p in pairs], lens * 2, pad_id
    )
    n = len(pairs)
    device = logp.device
    ref_c = torch.tensor([p.ref_chosen for p in pairs], device=device)
    ref_r = torch.tensor([p.ref_rejected for p in pairs], device=device)
    reward_c = beta * (logp[:n] - ref_c)
    reward_r = beta * (logp[n:] - ref_r)
    margin = reward_c - reward_r
    value = -F.logsigmoid(margin).mean()
    return value, {
        "reward_accuracy": (margin > 0).float().mean().item(),
        "reward_margin": margin.mean().item(),
    }


@torch.no_grad()
def evaluate_pairs(
    model: torch.nn.Module, pairs: Sequence[Pair], beta: float, pad_id: int, batch_size: int
) -> dict[str, float]:
    """Loss, reward accuracy and margin over all `pairs`, averaged per pair."""
    totals = {"val_loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k : k + batch_size]
        value, extra = loss(model, chunk, beta, pad_id)
        for name, v in {"val_loss": value.item(), **extra}.items():
            totals[name] += v * len(chunk)
    return {name: v / len(pairs) for name, v in totals.items()}


def run(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> DPOSummary:
    """DPO: preference pairs -> reference log-probabilities (once) -> the DPO loss; reward
    accuracy and margin on the validation pairs at every evaluation."""
    tok, added = with_chat_tokens(base)
    model, template = base.model, ChatTemplate()
    block = model.cfg.block_size
    train, val, skipped = records.held_out(s, records.to_preference)

    def encode_all(items: list) -> tuple[list[Pair], int]:
        pairs, cut = [], 0
        for prompt, chosen, rejected in items:
            pair, was_cut = encode(tok, template, prompt, chosen, rejected, block)
            cut += was_cut
            if pair is not None:
                pairs.append(pair)
        return pairs, cut

    train_pairs, cut = encode_all(train)
    val_pairs, val_cut = encode_all(val)
    if not train_pairs:
        raise StageError(
            f"finetune.data={s.data}: every prompt is longer than the context ({block} tokens)"
        )
    model.to(device)
    pad = tok.eot_id
    model.eval()
    add_reference(model, train_pairs + val_pairs, pad, s.batch_size)
    if s.lora_rank:
        use_lora(model, s, vocab_params(model, added))
    steps = total_steps(s, len(train_pairs))
    order = EpochBatches(len(train_pairs), s.batch_size, s.seed)
    prompts = [[{"role": "user", "content": p}] for p in s.sample_prompts] or [
        p for p, _, _ in val[:2]
    ]

    def batch_for(step: int) -> list[Pair]:
        return [train_pairs[i] for i in order(step)]

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if val_pairs:
            result = {
                k: round(v, 5)
                for k, v in evaluate_pairs(model, val_pairs, s.beta, pad, s.batch_size).items()
            }
        result["samples"] = [
            {
                "prompt": p[-1]["content"],
                "answer": sft.reply(model, tok, template, p, s.max_new_tokens),
            }
            for p in prompts
        ]
        return result

    evals = fit(
        model,
        steps,
        batch_for,
        lambda b: loss(model, b, s.beta, pad),
        evaluate,
        s,
        out / runs.METRICS,
        progress,
    )
    save_chat_run(
        out,
        model,
        tok,
        template,
        s,
        steps,
        {"task": "dpo", "val_loss": evals[-1].get("val_loss")},
        base,
    )
    return DPOSummary(
        task="dpo",
        base=base.source,
        steps=steps,
        pairs={"train": len(train_pairs), "val": len(val_pairs)},
        truncated={"train": cut, "val": val_cut},
        skipped_records=records.skipped_summary(skipped),
        added_tokens=added,
        initial={k: v for k, v in evals[0].items() if k != "samples"},
        final={k: v for k, v in evals[-1].items() if k != "samples"},
        answers=sft.answers(evals),
    )
