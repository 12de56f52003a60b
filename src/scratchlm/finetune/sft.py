"""Supervised fine-tuning on conversations: next-token loss on the assistant's tokens only.

    conversation --template--> ids + trained mask --> inputs x, targets y (-1 = not trained)

        ids      <|user|> Hi <|end|> <|assistant|> Hello <|end|>
        x        <|user|> Hi <|end|> <|assistant|> Hello
        y          -1     -1   -1      Hello       <|end|>

Examples are packed several to a row (each attends only to itself: see GPT's document_ids)
or padded one to a row; either way a batch is a rectangle and -1 targets cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.finetune import records
from scratchlm.finetune.base import Base, save_chat_run, vocab_params, with_chat_tokens
from scratchlm.finetune.loop import EpochBatches, fit, total_steps, use_lora
from scratchlm.finetune.summaries import SFTSummary
from scratchlm.infer.generate import sample
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass
class Example:
    inputs: list[int]
    targets: list[int]  # next token to predict at each position, -1 where it is not trained


def encode(
    tokenizer: Tokenizer, template: ChatTemplate, messages: Sequence[dict[str, str]], max_len: int
) -> tuple[Example | None, bool]:
    """One conversation as an example of at most `max_len` positions, and whether it was cut.
    None when the cut leaves nothing to learn (the prompt alone fills the context)."""
    ids, trained = template.render(tokenizer, messages, add_generation_prompt=False)
    targets = [t if keep else -1 for t, keep in zip(ids[1:], trained[1:], strict=True)]
    inputs = ids[:-1]
    truncated = len(inputs) > max_len
    inputs, targets = inputs[:max_len], targets[:max_len]
    if all(t == -1 for t in targets):
        return None, truncated
    return Example(inputs, targets), truncated


@dataclass
class Row:
    """One row of a batch: inputs, targets and, when packed, which example each token is in."""

    inputs: list[int]
    targets: list[int]
    documents: list[int]


def pack(examples: Sequence[Example], length: int, pad_id: int) -> list[Row]:
    """Fill rows of `length` with whole examples in order (one never straddles two rows);
    the rest of a row is padding that is neither attended to nor trained."""
    rows: list[Row] = []
    row = Row([], [], [])
    for ex in examples:
        if row.inputs and len(row.inputs) + len(ex.inputs) > length:
            rows.append(row)
            row = Row([], [], [])
        doc = row.documents[-1] + 1 if row.documents else 0
        row.inputs += ex.inputs
        row.targets += ex.targets
        row.documents += [doc] * len(ex.inputs)
    if row.inputs:
        rows.append(row)
    for r in rows:
        pad = length - len(r.inputs)
        r.inputs += [pad_id] * pad
        r.targets += [-1] * pad
        r.documents += [r.documents[-1] + 1] * pad  # padding is a 'document' of its own
    return rows


def pad_rows(examples: Sequence[Example]) -> list[Row]:
    """One example per row (padded later, per batch, to the batch's longest)."""
    return [Row(list(e.inputs), list(e.targets), [0] * len(e.inputs)) for e in examples]


def collate(rows: Sequence[Row], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    T = max(len(r.inputs) for r in rows)

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (T - len(values))

    return {
        "inputs": torch.tensor([padded(r.inputs, pad_id) for r in rows], device=device),
        "targets": torch.tensor([padded(r.targets, -1) for r in rows], device=device),
        "documents": torch.tensor(
            [padded(r.documents, r.documents[-1] + 1) for r in rows], device=device
        ),
    }


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the trained tokens of the batch."""
    _, value = model(batch["inputs"], batch["targets"], document_ids=batch["documents"])
    return value


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module, rows: list[Row], batch_size: int, pad_id: int, device: torch.device
) -> float:
    """Validation loss, weighted by trained tokens (not by batch)."""
    total, count = 0.0, 0
    for k in range(0, len(rows), batch_size):
        b = collate(rows[k : k + batch_size], pad_id, device)
        n = int((b["targets"] != -1).sum())
        total += loss(model, b).item() * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def reply(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[dict[str, str]],
    max_new_tokens: int,
) -> str:
    """The model's greedy answer to a conversation, up to its <|end|>."""
    ids, _ = template.render(tokenizer, messages, add_generation_prompt=True)
    room = model.cfg.block_size - len(ids)
    if room <= 0:
        return ""
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)
    steps = min(max_new_tokens, room)
    out = sample(model, prompt, steps, temperature=0.0, vocab_limit=tokenizer.vocab_size)
    new = out[0, len(ids) :].tolist()
    stops = {tokenizer.special_tokens[template.end], tokenizer.eot_id}
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    return tokenizer.decode(new[:cut]).strip()


def sample_conversations(
    s: FinetuneSettings, val: list[list[dict[str, str]]]
) -> list[list[dict[str, str]]]:
    """The fixed prompts answered at each evaluation."""
    if s.sample_prompts:
        return [[{"role": "user", "content": p}] for p in s.sample_prompts]
    convs = []
    for messages in val[:2]:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        convs.append(messages[:last])
    return convs


def answers(evals: list[dict[str, Any]]) -> list[dict[str, str]]:
    before, after = evals[0]["samples"], evals[-1]["samples"]
    return [
        {"prompt": b["prompt"], "before": b["answer"], "after": a["answer"]}
        for b, a in zip(before, after, strict=True)
    ]


def run(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> SFTSummary:
    """SFT: conversations -> examples (cut to the context, counted) -> packed or padded rows;
    validation loss and answers to fixed prompts at every evaluation."""
    train, val, skipped = records.held_out(s, records.to_messages)
    template = ChatTemplate()
    tok, added = with_chat_tokens(base, tools=template.uses_tools(train))
    model, block = base.model, base.model.cfg.block_size

    def encode_all(convs: list) -> tuple[list[Example], int, int]:
        examples, cut, dropped = [], 0, 0
        for messages in convs:
            ex, was_cut = encode(tok, template, messages, block)
            cut += was_cut
            if ex is None:
                dropped += 1
            else:
                examples.append(ex)
        return examples, cut, dropped

    train_ex, cut, dropped = encode_all(train)
    val_ex, val_cut, val_dropped = encode_all(val)
    if not train_ex:
        raise StageError(
            f"finetune.data={s.data}: every prompt is longer than the context "
            f"(model.block_size={block} tokens) after templating"
        )
    pad = tok.eot_id
    rows = pack(train_ex, block, pad) if s.packing else pad_rows(train_ex)
    val_rows = pack(val_ex, block, pad) if s.packing else pad_rows(val_ex)
    if s.lora_rank:
        use_lora(model, s, vocab_params(model, added))
    model.to(device)
    steps = total_steps(s, len(rows))
    order = EpochBatches(len(rows), s.batch_size, s.seed)
    prompts = sample_conversations(s, val)

    def batch_for(step: int) -> dict[str, torch.Tensor]:
        return collate([rows[i] for i in order(step)], pad, device)

    def evaluate(step: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if val_rows:
            result["val_loss"] = round(eval_loss(model, val_rows, s.batch_size, pad, device), 5)
        result["samples"] = [
            {
                "prompt": p[-1]["content"],
                "answer": reply(model, tok, template, p, s.max_new_tokens),
            }
            for p in prompts
        ]
        return result

    evals = fit(
        model,
        steps,
        batch_for,
        lambda b: (loss(model, b), {}),
        evaluate,
        s,
        out / runs.METRICS,
        progress,
    )
    final = evals[-1].get("val_loss")
    save_chat_run(out, model, tok, template, s, steps, {"task": "sft", "val_loss": final}, base)
    return SFTSummary(
        task="sft",
        base=base.source,
        steps=steps,
        examples={"train": len(train_ex), "val": len(val_ex)},
        rows={"train": len(rows), "val": len(val_rows)},
        truncated={"train": cut, "val": val_cut},
        dropped_prompt_too_long={"train": dropped, "val": val_dropped},
        skipped_records=records.skipped_summary(skipped),
        added_tokens=added,
        lora=s.lora_rank > 0,
        initial_val_loss=evals[0].get("val_loss"),
        final_val_loss=final,
        answers=answers(evals),
    )
