"""Generation: prompts in, tokens out one step at a time, for many rows at once.

    rows -> the engine (infer/engine.py: continuous batching, a KV cache of real tokens) ->
    per step, per row: pick a token (infer/sampling.py) -> text (infer/text.py) -> stop?

Each `Row` (infer/row.py) carries its own prompt, sampling rules, seed, token budget and stop
conditions, so rows that share nothing generate together, and a row's text never depends on
the rows beside it. A row that finishes (a stop token, a stop string, its budget, a client
gone) leaves at once and a waiting one takes its place. Past the context (block_size), each
further token is read from the row's last block_size tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm import runs
from scratchlm.config import GenerateSettings
from scratchlm.errors import StageError
from scratchlm.infer.engine import Engine
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer

__all__ = ["Row", "generate_rows", "complete", "stream_text", "generate_text", "sample"]


def generate_rows(
    model: GPT,
    tokenizer: Tokenizer | None,
    rows: list[Row],
    vocab_size: int | None = None,
    max_batch: int | None = None,
) -> Iterator[list[tuple[Row, str]]]:
    """Generate every row, `max_batch` at a time (default: all); after each step yield
    (row, new text) for the rows that moved (the text is "" without a tokenizer). A row is
    finished once its `finish_reason` is set. Tokens are picked among the first `vocab_size`
    ids (default: the tokenizer's)."""
    engine = Engine(model, tokenizer, max_batch or max(len(rows), 1), vocab_size=vocab_size)
    for row in rows:
        engine.add(row)
    while engine.busy:
        yield engine.step()


# ------------------------------------------------------------------ from settings and text


def sampling_of(s: GenerateSettings) -> Sampling:
    return Sampling(s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty)


def rows_for(tok: Tokenizer, prompts: list[str], s: GenerateSettings) -> list[Row]:
    """One row per prompt; an empty prompt starts as a new document would (<|endoftext|>)."""
    return [
        Row(
            tok.encode(p) or [tok.eot_id],
            s.max_new_tokens,
            sampling_of(s),
            s.seed,
            tuple(s.stop),
            frozenset({tok.eot_id}),
            tools=s.tools,
        )
        for p in prompts
    ]


def stream_text(model: GPT, tok: Tokenizer, prompt: str, s: GenerateSettings) -> Iterator[str]:
    """The continuation of one prompt, piece by piece as it is generated."""
    rows = rows_for(tok, [prompt], s)
    for events in generate_rows(model, tok, rows):
        for _, text in events:
            if text:
                yield text
    if rows[0].finish_reason == "error":
        raise StageError(f"generation failed: {rows[0].error}")


def complete(
    model: GPT, tok: Tokenizer, prompts: list[str], s: GenerateSettings, batch_size: int = 8
) -> list[Row]:
    """Continue every prompt, at most `batch_size` generating at once (a finished row's place
    goes to the next prompt at once); each row's `.stream.text` is its text."""
    rows = rows_for(tok, prompts, s)
    for _ in generate_rows(model, tok, rows, max_batch=batch_size):
        pass
    return rows


def generate_text(model: GPT, tok: Tokenizer, prompt: str, s: GenerateSettings) -> str:
    """The prompt followed by what the model writes after it (at most `s.max_new_tokens`)."""
    return prompt + "".join(stream_text(model, tok, prompt, s))


@torch.inference_mode()
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
    """Tensor in, tensor out: `idx` (B, T), rows left-padded where `attention_mask` is False,
    with `max_new_tokens` tokens appended to each row (no stop token; temperature 0 is greedy).
    A `generator` seeds every row alike."""
    seed = None
    if generator is not None:  # a GPU's generator draws on its own device
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    rows = [
        Row(
            idx[i][attention_mask[i].bool()].tolist()
            if attention_mask is not None
            else idx[i].tolist(),
            max_new_tokens,
            Sampling(temperature, top_k),
            seed,
        )
        for i in range(idx.size(0))
    ]
    for _ in generate_rows(model, None, rows, vocab_limit):
        pass
    new = torch.tensor([r.tokens for r in rows], device=idx.device)
    return torch.cat([idx, new], dim=1)


# ------------------------------------------------------------------ loading


def untrained_model(cfg: ModelConfig, seed: int) -> GPT:
    """The same architecture at initialisation: the 'before' of a before/after comparison."""
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@dataclass
class SampleSummary:
    samples: list[dict[str, str]]  # {"prompt", "untrained", "trained"}

    def headline(self) -> str:
        return f"{len(self.samples)} samples"


def before_after_samples(
    run_dir: Path, s: GenerateSettings, init_seed: int
) -> list[dict[str, str]]:
    """For each prompt: what the untrained model writes, and what the trained one writes."""
    loaded = runs.load_model(run_dir)
    model, tok = loaded.model, loaded.tokenizer
    before = untrained_model(model.cfg, init_seed)
    return [
        {
            "prompt": p,
            "untrained": generate_text(before, tok, p, s),
            "trained": generate_text(model, tok, p, s),
        }
        for p in s.prompts
    ]
