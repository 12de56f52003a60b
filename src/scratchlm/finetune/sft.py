"""Supervised fine-tuning on conversations: next-token loss on the assistant's tokens only.

    conversation --template--> ids + trained mask --> inputs x, targets y (-1 = not trained)

        ids      <|user|> Hi <|end|> <|assistant|> Hello <|end|>
        x        <|user|> Hi <|end|> <|assistant|> Hello
        y          -1     -1   -1      Hello       <|end|>

Examples are packed several to a row (each attends only to itself: see GPT's document_ids)
or padded one to a row; either way a batch is a rectangle and -1 targets cost nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scratchlm.tokenizer.chat import ChatTemplate


@dataclass
class Example:
    inputs: list[int]
    targets: list[int]  # next token to predict at each position, -1 where it is not trained


def encode(
    tokenizer: Any, template: ChatTemplate, messages: Sequence[dict[str, str]], max_len: int
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


def batches(rows: list[Row], batch_size: int, seed: int, epoch: int) -> list[list[Row]]:
    """This epoch's batches: the rows shuffled by (seed, epoch), so a run is reproducible."""
    order = list(range(len(rows)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[rows[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


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
    tokenizer: Any,
    template: ChatTemplate,
    messages: Sequence[dict[str, str]],
    max_new_tokens: int,
) -> str:
    """The model's greedy answer to a conversation, up to its <|end|>."""
    from scratchlm.infer.generate import sample

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
