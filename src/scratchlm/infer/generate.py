"""Generation: prompts in, tokens out one step at a time, for a batch of rows at once.

    prompts -> left-pad to one length -> one pass fills the KV cache -> per step, per row:
    pick a token (infer/sampling.py) -> text (infer/text.py) -> stop? -> the next one-token pass

Each `Row` carries its own prompt, sampling rules, seed, token budget and stop conditions, so
the server can batch requests that share nothing. A row that finishes (a stop token, a stop
string, its budget, a client gone) leaves the batch and its cache rows are dropped.

While the padded batch fits the context (block_size), the prompt is read once and each new
token costs one step. Past it, every step re-reads each row's last block_size tokens: slower,
but the text a row gets never depends on the rows beside it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scratchlm import runs
from scratchlm.config import GenerateSettings
from scratchlm.infer.sampling import Sampling, pick
from scratchlm.infer.text import TextStream
from scratchlm.model.cache import KVCache
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass(eq=False)
class Row:
    """One sequence to generate: what it starts from, its rules, and what it has produced."""

    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    seed: int | None = None  # None: a random seed
    stop: tuple[str, ...] = ()  # stop strings: the text ends just before the first one
    stop_ids: frozenset[int] = frozenset()  # stop tokens: end of text, end of turn
    tokens: list[int] = field(default_factory=list)  # generated so far (no stop token)
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once finished
    cancelled: bool = False  # set by another thread (a client that left): dropped next step

    def start(self, tokenizer: Tokenizer | None) -> None:
        seed = self.seed if self.seed is not None else random.randrange(2**63)
        # on the CPU, where picking happens: the same seed gives the same text on any device
        self.generator = torch.Generator().manual_seed(seed % 2**64)  # any int a client sends
        self.stream = TextStream(tokenizer, self.stop) if tokenizer is not None else None
        self._seen: torch.Tensor | None = None
        if self.sampling.repetition_penalty != 1.0:  # the text so far, grown in place
            self._seen = torch.empty(
                len(self.prompt) + max(self.max_new_tokens, 0), dtype=torch.long
            )
            self._seen[: len(self.prompt)] = torch.tensor(self.prompt)

    def seen(self) -> torch.Tensor | None:
        """The ids in the text so far (for the repetition penalty), without copying it."""
        if self._seen is None:
            return None
        return self._seen[: len(self.prompt) + len(self.tokens)]

    def accept(self, token: int) -> str:
        """Record the picked token; return the text it makes final, and finish when due."""
        stream = self.stream
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return stream.finish() if stream else ""
        if self._seen is not None:
            self._seen[len(self.prompt) + len(self.tokens)] = token
        self.tokens.append(token)
        text = stream.push(token) if stream else ""
        if stream and stream.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
            text += stream.finish() if stream else ""
        return text


def _read(model: GPT, rows: list[Row], cache_room: int) -> tuple[KVCache | None, torch.Tensor]:
    """One pass over each row's text so far (its last block_size tokens), left-padded to one
    length; returns the cache (None when `cache_room` is 0) and each row's next-token logits."""
    window = model.cfg.block_size
    seqs = [(r.prompt + r.tokens)[-window:] for r in rows]
    T = max(map(len, seqs))
    device = next(model.parameters()).device
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, T - len(s) :] = torch.tensor(s)
        mask[i, T - len(s) :] = True
    idx, mask = idx.to(device), mask.to(device)
    cache = None
    if cache_room > 0:
        dtype = next(model.parameters()).dtype
        if torch.is_autocast_enabled(device.type):  # keys and values come out in its dtype
            dtype = torch.get_autocast_dtype(device.type)
        cache = KVCache(model.cfg, len(rows), T + cache_room, device=device, dtype=dtype)
    h = model.hidden_states(idx, cache, None if bool(mask.all()) else mask)
    return cache, model.head(h[:, -1])


@torch.inference_mode()
def generate_rows(
    model: GPT, tokenizer: Tokenizer | None, rows: list[Row], vocab_size: int | None = None
) -> Iterator[list[tuple[Row, str]]]:
    """Generate every row; after each step yield (row, new text) for the rows still going
    (the text is "" without a tokenizer). A row is finished once its `finish_reason` is set.
    Tokens are picked among the first `vocab_size` ids (default: the tokenizer's)."""
    if vocab_size is None:
        vocab_size = tokenizer.vocab_size if tokenizer is not None else model.cfg.vocab_size
    block = model.cfg.block_size
    for r in rows:
        r.start(tokenizer)
        if not r.prompt:
            raise ValueError("a prompt needs at least one token")
        if r.max_new_tokens <= 0:
            r.finish_reason = "length"
    live = [r for r in rows if r.finish_reason is None]
    if not live:
        return
    T = min(block, max(len(r.prompt) for r in live))
    cache, logits = _read(model, live, min(block - T, max(r.max_new_tokens for r in live)))
    while True:
        events = []
        # A model's vocabulary may be padded past the tokenizer's: those ids mean nothing. The
        # rows pick on the CPU: one device-to-host copy per step, not one sync per row.
        step_logits = logits[:, :vocab_size].float().cpu()
        for i, row in enumerate(live):
            if row.cancelled:
                row.finish_reason = "cancelled"
                continue
            token = pick(step_logits[i], row.sampling, row.generator, row.seen())
            events.append((row, row.accept(token)))
        yield events
        keep = [i for i, r in enumerate(live) if r.finish_reason is None]
        if not keep:
            return
        if len(keep) < len(live):
            live = [live[i] for i in keep]
            if cache is not None:
                cache.keep_rows(torch.tensor(keep, device=cache.k.device))
        if cache is not None and cache.length < cache.max_len:
            last = torch.tensor([[r.tokens[-1]] for r in live], device=cache.k.device)
            logits = model.head(model.hidden_states(last, cache)[:, -1])
        else:  # past the context: re-read the last block_size tokens of each row
            cache, logits = _read(model, live, 0)


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
        )
        for p in prompts
    ]


def stream_text(model: GPT, tok: Tokenizer, prompt: str, s: GenerateSettings) -> Iterator[str]:
    """The continuation of one prompt, piece by piece as it is generated."""
    for events in generate_rows(model, tok, rows_for(tok, [prompt], s)):
        for _, text in events:
            if text:
                yield text


def complete(
    model: GPT, tok: Tokenizer, prompts: list[str], s: GenerateSettings, batch_size: int = 8
) -> list[Row]:
    """Continue every prompt, `batch_size` at a time; each row's `.stream.text` is its text."""
    rows = rows_for(tok, prompts, s)
    for i in range(0, len(rows), batch_size):
        for _ in generate_rows(model, tok, rows[i : i + batch_size]):
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
