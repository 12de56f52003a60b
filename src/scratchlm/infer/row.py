"""One sequence to generate: what it starts from, its rules, and what it has produced.

A `Row` is what a caller hands the engine (infer/engine.py) and reads back. Its context `ids`
is the prompt, then every generated token; a caller may also `extend` it between steps with
tokens of its own (a tool's answer), which the engine reads before the next token is picked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchlm.infer.sampling import Sampling, pick
from scratchlm.infer.text import TextStream
from scratchlm.tokenizer.tokenizer import Tokenizer

# (logprob of the token, [(id, logprob) of the most likely ones]) for one position
TokenLogprob = tuple[float, list[tuple[int, float]]]


@dataclass(eq=False)
class Row:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    seed: int | None = None  # None: a random seed
    stop: tuple[str, ...] = ()  # stop strings: the text ends just before the first one
    stop_ids: frozenset[int] = frozenset()  # stop tokens: end of text, end of turn
    logprobs: int | None = None  # record each generated token's logprob and this many top ones
    prompt_logprobs: int | None = None  # the same for each prompt token after the first
    hide_ids: frozenset[int] = frozenset()  # tokens left out of the text (special tokens)
    tools: bool = False  # run the calculator when the model closes a <|tool|> call
    tag: Any = None  # the caller's: who asked (the engine never reads it)
    tokens: list[int] = field(default_factory=list)  # generated so far (no stop token)
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error" once finished
    error: str | None = None  # with finish_reason "error": what went wrong
    cancelled: bool = False  # set by another thread (a client that left): dropped next step

    def start(self, tokenizer: Tokenizer | None, vocab_size: int) -> None:
        """Ready the row to generate (the engine calls it once, when the row is added)."""
        if not self.prompt:
            raise ValueError("a prompt needs at least one token")
        seed = self.seed if self.seed is not None else random.randrange(2**63)
        # on the CPU, where picking happens: the same seed gives the same text on any device
        self.generator = torch.Generator().manual_seed(seed % 2**64)  # any int a client sends
        self.stream = TextStream(tokenizer, self.stop) if tokenizer is not None else None
        self.ids = list(self.prompt)  # the context: prompt, generated and extended tokens
        self.window = 0  # ids[window:] is what the model sees (the last block_size tokens)
        self.cached = 0  # ids[window : window + cached] are in the engine's KV cache
        self.token_logprobs: list[TokenLogprob] = []
        self.tool_spans: list[tuple[int, int]] = []  # ids[a:b] a tool wrote, not the model
        self.stop_token: int | None = None  # the stop id that ended the row, if one did
        self.prompt_token_logprobs: list[TokenLogprob | None] = [None]  # the first: no context
        s = self.sampling
        self._seen = self._counts = None
        if s.repetition_penalty != 1.0:  # which ids the text holds so far
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            self._seen[torch.tensor([i for i in self.prompt if i < vocab_size], dtype=torch.long)] = True  # fmt: skip
        if s.frequency_penalty or s.presence_penalty:  # how often each id was generated
            self._counts = torch.zeros(vocab_size)
        if self.max_new_tokens <= 0 and not self.prompt_logprobs:
            self.finish_reason = "length"

    @property
    def pending(self) -> int:
        """Tokens of the context the model has not read yet."""
        return len(self.ids) - self.window - self.cached

    @property
    def wants_token(self) -> bool:
        return self.finish_reason is None and len(self.tokens) < self.max_new_tokens

    def extend(self, ids: list[int]) -> None:
        """Add tokens to the context (not to the generated text): read before the next pick."""
        self.ids.extend(ids)

    def pick(self, logits: torch.Tensor) -> int:
        return pick(logits, self.sampling, self.generator, self._seen, self._counts)

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Record the picked token; return the text it makes final, and finish when due."""
        stream = self.stream
        if token in self.stop_ids:
            self.finish_reason, self.stop_token = "stop", token
            return stream.finish() if stream else ""
        self.ids.append(token)
        self.tokens.append(token)
        if logprob is not None:
            self.token_logprobs.append(logprob)
        if self._seen is not None and token < self._seen.numel():
            self._seen[token] = True
        if self._counts is not None and token < self._counts.numel():
            self._counts[token] += 1
        text = stream.push(token) if stream and token not in self.hide_ids else ""
        if stream and stream.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
            text += stream.finish() if stream else ""
        return text

    def fail(self, message: str) -> None:
        self.finish_reason, self.error = "error", message
