"""Learning-rate schedules, as a multiplier of the peak rate; pretraining and fine-tuning share it.

cosine  linear warmup, then a cosine from 1 down to min_ratio at the last step
wsd     linear warmup, constant, then a linear decay to min_ratio over the last
        `decay_fraction` of the steps (warmup-stable-decay)
"""

from __future__ import annotations

import math


def lr_multiplier(
    step: int,
    total: int,
    warmup: int,
    min_ratio: float,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """The multiplier of the peak learning rate at `step` (0-based) of `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = total - int(decay_fraction * total)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, total - decay_start)
        return 1.0 - (1.0 - min_ratio) * min(progress, 1.0)
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)
