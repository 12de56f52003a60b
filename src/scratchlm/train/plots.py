"""Curves of a run, as PNGs beside its metrics: losses, and task scores from the eval hook."""

from __future__ import annotations

import os
from pathlib import Path


def plot_losses(history: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> None:
    """Train loss (light, every step) and validation loss (dots) against steps; atomic write."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if history.get("train"):
        steps, losses = zip(*history["train"], strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.4, linewidth=0.8, label="train")
    if history.get("val"):
        steps, losses = zip(*history["val"], strict=True)
        ax.plot(steps, losses, "o-", color="tab:orange", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    _finish(fig, ax, title, path)


def plot_scores(scores: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> None:
    """Task accuracies (the eval.every_steps hook) against steps; atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in sorted(scores.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, [100 * v for v in values], "o-", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    _finish(fig, ax, title, path)


def _finish(fig, ax, title: str, path: Path) -> None:
    """Title, grid and legend; then write the PNG atomically (a reader never sees half a file)."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
