"""Choosing the next token from the model's scores (logits), one row at a time.

    logits -> repetition penalty -> / temperature -> top-k -> top-p -> min-p -> softmax -> draw

| filter             | keeps                                                        |
| ------------------ | ------------------------------------------------------------ |
| top_k = k          | the k highest-scoring tokens                                 |
| top_p = p          | the fewest most likely tokens whose probabilities sum to >= p |
| min_p = m          | tokens at least m times as likely as the most likely one     |
| temperature = 0    | only the most likely token (greedy: no randomness at all)    |

A filtered-out token gets a logit of -inf, so its probability is exactly 0: it can never be
drawn. Each row draws with its own seeded `torch.Generator`, so a seed gives the same text
whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no limit
    min_p: float = 0.0  # 0: no limit
    repetition_penalty: float = 1.0  # 1: none; > 1 discourages tokens already in the text

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019), as HF applies it: a token already in the text has its
    positive logit divided by `penalty` and its negative logit multiplied by it."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(-1, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(-1, seen, scores)


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Logits (V,) divided by the temperature, with -inf for every token the filters exclude."""
    logits = logits.float() / s.temperature
    if s.top_k and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        probs, order = logits.softmax(-1).sort(descending=True)
        # Keep a token when the tokens ranked above it hold less than top_p: the first always stays.
        drop = probs.cumsum(-1) - probs >= s.top_p
        drop[..., 0] = False  # even top_p = 0 keeps the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if s.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < s.min_p * probs.max(), float("-inf"))
    return logits


def pick(
    logits: torch.Tensor,
    s: Sampling,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> int:
    """The next token id from one row's logits (V,); `seen` holds the ids already in the text."""
    if seen is not None:
        logits = penalize_repeats(logits, seen, s.repetition_penalty)
    if s.greedy:
        return int(logits.argmax())
    probs = filter_logits(logits, s).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
