"""Choosing the next token from the model's scores (logits), one row at a time.

    logits -> penalties -> / temperature -> top-k -> top-p -> min-p -> softmax -> draw

| filter             | keeps                                                        |
| ------------------ | ------------------------------------------------------------ |
| top_k = k          | the k highest-scoring tokens                                 |
| top_p = p          | the fewest most likely tokens whose probabilities sum to >= p |
| min_p = m          | tokens at least m times as likely as the most likely one     |
| temperature = 0    | only the most likely token (greedy: no randomness at all)    |

A filtered-out token gets a logit of -inf, so its probability is exactly 0: it can never be
drawn. Each row draws with its own seeded `torch.Generator`, so a seed gives the same text
whatever else shares the batch.

The arithmetic stays finite for any setting the validation lets through: the logits are shifted
so their maximum is 0 before dividing by the temperature (a tiny temperature gives -inf for the
others, never inf - inf), a temperature below `GREEDY_BELOW` is greedy (as vLLM does: below it
float32 cannot tell the draw from the argmax), and penalised scores are clamped to float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5  # a temperature under this is greedy


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no limit
    min_p: float = 0.0  # 0: no limit
    repetition_penalty: float = 1.0  # 1: none; > 1 discourages tokens already in the text
    frequency_penalty: float = 0.0  # OpenAI's: minus this x how often a token was generated
    presence_penalty: float = 0.0  # OpenAI's: minus this once a token has been generated

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


FLOAT_MAX = torch.finfo(torch.float32).max


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019), as HF applies it: a token already in the text has its
    positive logit divided by `penalty` and its negative logit multiplied by it. `seen` holds
    token ids (repeats allowed) or is a boolean mask over the vocabulary."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    if seen.dtype != torch.bool:
        seen = torch.zeros(logits.size(-1), dtype=torch.bool).index_fill_(0, seen, True)
    scores = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scores, logits).clamp(-FLOAT_MAX, FLOAT_MAX)


def penalize(
    logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None, counts: torch.Tensor | None
) -> torch.Tensor:
    """All three penalties: repetition on the whole text (`seen`, a mask), frequency and presence
    on the generated tokens (`counts`, how often each was generated), as vLLM applies them."""
    if seen is not None:
        logits = penalize_repeats(logits, seen, s.repetition_penalty)
    if counts is not None:
        logits = logits - s.frequency_penalty * counts - s.presence_penalty * (counts > 0)
    return logits


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Logits (V,) divided by the temperature, with -inf for every token the filters exclude."""
    logits = logits.float()
    logits = (logits - logits.max()) / max(s.temperature, GREEDY_BELOW)  # the top one is 0
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
    counts: torch.Tensor | None = None,
) -> int:
    """The next token id from one row's logits (V,); `seen` holds the ids already in the text
    (or a mask of them), `counts` how often each id was generated."""
    logits = penalize(logits, s, seen, counts)
    if s.greedy:
        return int(logits.argmax())
    probs = filter_logits(logits, s).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
