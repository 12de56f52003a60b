"""The starting point of fine-tuning, and the run folder it ends in.

A base is a run folder of ours (its latest checkpoint) or a Hugging Face GPT-2 / Llama folder.
A fine-tuned run folder reads like a pretraining one, so `generate`, `export` and `eval` take it:

    config.yaml          the model settings (vocab grown if chat tokens were added) + finetune.*
    tokenizer.json       the base's tokenizer, with the chat tokens when it lacked them
    chat_template.json   sft / dpo: how conversations become tokens
    labels.json          classify: the class names, in the head's output order
    metrics.jsonl        train loss, validation results and sample answers
    checkpoints/step_N/  model.safetensors (full weights), or with LoRA and no merge
                         adapter.safetensors and meta.json's "base", the weights it adapts
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.finetune.loop import save_tuned
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.chat import ChatTemplate, add_chat_tokens
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass
class Base:
    model: GPT
    tokenizer: Tokenizer
    source: dict[str, str]  # {"kind": "run", "checkpoint": ...} or {"kind": "hf", "path": ...}


def load_base(path: str | Path) -> Base:
    """Our run folder or an HF folder, as a model in training precision and its tokenizer.
    The source names the weights with their checksum: unmerged adapters are only ever applied
    to the weights they were trained on."""
    loaded = runs.load_model(path)
    source = loaded.source | {"sha256": runs.weights_sha256(loaded.source)}
    return Base(loaded.model.float().train(), loaded.tokenizer, source)


@torch.no_grad()
def grow_vocab(model: GPT, vocab_size: int) -> None:
    """Give `model` rows for new token ids, started at the mean of the existing rows (a
    neutral 'some token' that the fine-tuning then specialises)."""
    cfg = model.cfg
    if vocab_size <= cfg.vocab_size:
        return
    old = model.wte.weight
    wte = nn.Embedding(vocab_size, cfg.n_embd, device=old.device, dtype=old.dtype)
    wte.weight[: cfg.vocab_size] = old
    wte.weight[cfg.vocab_size :] = old.mean(dim=0)
    head = nn.Linear(cfg.n_embd, vocab_size, bias=False, device=old.device, dtype=old.dtype)
    if cfg.tie_embeddings:
        head.weight = wte.weight
    else:
        head.weight[: cfg.vocab_size] = model.lm_head.weight
        head.weight[cfg.vocab_size :] = model.lm_head.weight.mean(dim=0)
    model.wte, model.lm_head = wte, head
    model.cfg = dataclasses.replace(cfg, vocab_size=vocab_size)


def write_run_config(out: Path, model_cfg: Any, settings: FinetuneSettings) -> None:
    """config.yaml of a fine-tuned run: the model it holds and how it was tuned."""
    runs.write_config(
        out, {"model": dataclasses.asdict(model_cfg), "finetune": dataclasses.asdict(settings)}
    )


def with_chat_tokens(base: Base, tools: bool = False) -> tuple[Tokenizer, list[str]]:
    """The tokenizer with chat tokens (and tool tokens, with `tools`), and the model grown to
    cover them."""
    tok, added = add_chat_tokens(base.tokenizer, tools=tools)
    grow_vocab(base.model, tok.vocab_size)
    return tok, added


def vocab_params(model: torch.nn.Module, added: list[str]) -> list[torch.nn.Parameter]:
    """With LoRA, the embedding rows of newly added tokens must still learn: train the
    embedding and output matrices in full when tokens were added."""
    return [model.wte.weight, model.lm_head.weight] if added else []


def save_chat_run(
    out: Path,
    model: Any,
    tok: Tokenizer,
    template: ChatTemplate,
    s: FinetuneSettings,
    steps: int,
    meta: dict,
    base: Base,
) -> None:
    save_tuned(out, steps, model, s, base.source, meta | {"model": dataclasses.asdict(model.cfg)})
    write_run_config(out, model.cfg, s)
    runs.save_tokenizer(out, tok)
    runs.save_chat_template(out, template)
