"""Multiple-choice scoring: which continuation does the model find most likely?

An item is a context, its choices and the index of the right one. Each choice is scored by the
log-likelihood of `delimiter + choice` after the context, the way EleutherAI's lm-eval scores
`output_type: multiple_choice`, so the same items give the same numbers in both tools:

    acc        argmax of the summed log-likelihood
    acc_norm   argmax of log-likelihood / len(choice) in characters (longer answers are not
               penalised for having more tokens to get right)

Loaders turn the public files of the standard benchmarks (hellaswag, arc, piqa, mmlu, and mc
for a task of your own) into items with lm-eval's prompts. The files and their formats are
data/benchmarks.py's, which curation's decontamination shares: each Item also keeps its own
words (question and answer), for the check against the training data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchlm.data.benchmarks import (
    detect_format,
    hellaswag_clean,
    item_text,
    piqa_labels,
    read_records,
)
from scratchlm.errors import StageError
from scratchlm.eval.perplexity import target_logprobs
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass
class Item:
    context: str
    choices: list[str]
    answer: int
    delimiter: str = " "  # lm-eval's target_delimiter: put between context and choice
    # the item's own words (question and answer, no prompt), for the training-data overlap check
    source_text: str = field(default="", compare=False, repr=False)

    @property
    def own_text(self) -> str:
        return self.source_text or self.context + self.delimiter + self.choices[self.answer]

    @property
    def id(self) -> str:
        """A short hash of the item's text: --compare pairs items by it."""
        text = json.dumps([self.context, self.choices, self.answer, self.delimiter])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- loaders


def _hellaswag(r: dict[str, Any]) -> Item:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    context = hellaswag_clean(r["activity_label"] + ": " + ctx)
    return Item(context, [hellaswag_clean(e) for e in r["endings"]], int(r["label"]))


def _arc(r: dict[str, Any]) -> Item:
    q = r["question"]
    if isinstance(q, dict):  # AI2's own files
        stem, choices = q["stem"], q["choices"]
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:  # the HF dataset's layout
        stem, texts, labels = q, r["choices"]["text"], r["choices"]["label"]
    return Item(f"Question: {stem}\nAnswer:", texts, labels.index(r["answerKey"]))


def _piqa(r: dict[str, Any]) -> Item:
    return Item(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def _mmlu(r: dict[str, Any]) -> Item:
    choices = list(r["choices"])
    letters = "ABCDEFGHIJ"[: len(choices)]
    lines = [r["question"].strip()] + [f"{k}. {c}" for k, c in zip(letters, choices, strict=True)]
    answer = r["answer"]
    answer = letters.index(answer) if isinstance(answer, str) else int(answer)
    return Item("\n".join(lines) + "\nAnswer:", list(letters), answer)


def _mc(r: dict[str, Any]) -> Item:
    context = r.get("context", r.get("query", ""))
    return Item(context, [str(c) for c in r["choices"]], int(r["answer"]))


FORMATS: dict[str, Callable[[dict[str, Any]], Item]] = {
    "hellaswag": _hellaswag,
    "arc": _arc,
    "piqa": _piqa,
    "mmlu": _mmlu,
    "mc": _mc,
}


def load_items(spec: str) -> tuple[list[Item], list[int]]:
    """Items of a task file ("PATH" or "FORMAT:PATH") and the line numbers that were skipped.

    A malformed line (bad JSON, missing keys, an answer out of range) is skipped and counted;
    a file with no valid item left is an error."""
    fmt, _, rest = spec.partition(":")
    if fmt in FORMATS and rest:
        path = Path(rest)
    else:
        fmt, path = "auto", Path(spec)
    if not path.is_file():
        raise StageError(f"task file {path}: no such file")
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise StageError(f"task file {path}: cannot read it: {e}") from None
    labels = piqa_labels(path)
    items, skipped = [], []
    for n, (lineno, rec) in enumerate(records):
        try:
            if isinstance(rec, Exception) or not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            if labels is not None and "label" not in rec and n < len(labels):
                rec = rec | {"label": labels[n]}
            kind = detect_format(rec) if fmt == "auto" else fmt
            item = FORMATS[kind](rec)
            item.source_text = item_text(rec, kind)  # the same fields: it cannot fail here
            if not item.choices or not 0 <= item.answer < len(item.choices):
                raise ValueError("answer index out of range")
            items.append(item)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            skipped.append(lineno)
    if not items:
        raise StageError(
            f"task file {path}: no valid item ({len(skipped)} malformed line(s), first at line "
            f"{skipped[0] if skipped else '-'}); expected e.g. "
            '{"context": "...", "choices": ["...", "..."], "answer": 0}'
        )
    return items, skipped


# --------------------------------------------------------------------------- scoring


def with_examples(items: list[Item], k: int, seed: int) -> list[Item]:
    """Each item preceded by k other solved items of the task, picked by (seed, item index)."""
    if k == 0:
        return items
    if k >= len(items):
        raise StageError(f"eval.few_shot={k} needs more than {k} items; the task has {len(items)}")
    out = []
    for i, item in enumerate(items):
        rng = random.Random(seed * 1_000_003 + i)
        picks = rng.sample([j for j in range(len(items)) if j != i], k)
        shots = "".join(
            items[j].context + items[j].delimiter + items[j].choices[items[j].answer] + "\n\n"
            for j in picks
        )
        out.append(Item(shots + item.context, item.choices, item.answer, item.delimiter))
    return out


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: context spaces move to the continuation, the whole is encoded at once
    and the continuation is what follows the context's tokens. An empty context is <|endoftext|>."""
    if not context:
        return [tok.eot_id], tok.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module, requests: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[float]:
    """Summed log p(continuation | context) per (context ids, continuation ids) request.

    A request longer than the context window loses tokens from its left, as in lm-eval."""
    window = model.cfg.block_size
    device = next(model.parameters()).device
    out = [0.0] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        wholes = [(requests[i][0] + requests[i][1])[-(window + 1) :] for i in group]
        width = max(len(w) - 1 for w in wholes)
        inputs = torch.zeros(len(group), width, dtype=torch.long)
        targets = torch.zeros(len(group), width, dtype=torch.long)
        for row, whole in enumerate(wholes):
            inputs[row, : len(whole) - 1] = torch.tensor(whole[:-1])  # right padding: causal
            targets[row, : len(whole) - 1] = torch.tensor(whole[1:])
        logp = target_logprobs(model(inputs.to(device))[0], targets.to(device))
        for row, i in enumerate(group):
            n = len(wholes[row]) - 1
            cont = min(len(requests[i][1]), n)  # a continuation longer than the window: its tail
            out[i] = logp[row, n - cont : n].sum().item()
    return out


@dataclass
class ItemScores:
    loglik: list[list[float]]  # per item, per choice
    correct: list[int]  # 1 where the highest log-likelihood is the answer
    correct_norm: list[int]  # the same, per character of the choice


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda j: (values[j], -j))  # ties: the first, as numpy


def score_items(
    model: torch.nn.Module,
    tok: Tokenizer,
    items: list[Item],
    few_shot: int = 0,
    seed: int = 0,
    batch_size: int = 16,
) -> ItemScores:
    """Score every choice of every item and say which items the model gets right."""
    prompted = with_examples(items, few_shot, seed)
    requests, owners = [], []
    for i, item in enumerate(prompted):
        for choice in item.choices:
            requests.append(encode_pair(tok, item.context, item.delimiter + choice))
            owners.append(i)
    flat = loglikelihoods(model, requests, batch_size)
    loglik: list[list[float]] = [[] for _ in items]
    for i, ll in zip(owners, flat, strict=True):
        loglik[i].append(ll)
    correct, correct_norm = [], []
    for item, lls in zip(items, loglik, strict=True):
        correct.append(int(_argmax(lls) == item.answer))
        norm = [ll / max(len(c), 1) for ll, c in zip(lls, item.choices, strict=True)]
        correct_norm.append(int(_argmax(norm) == item.answer))
    return ItemScores(loglik, correct, correct_norm)
