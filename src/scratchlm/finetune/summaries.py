"""What a fine-tuning run did: one typed summary per task, saved as summary.json in the run
folder and printed by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class FinetuneSummary:
    task: str
    base: dict[
        str, str
    ]  # {"kind": "run", "checkpoint": ...} or {"kind": "hf", "path": ...}, "sha256"
    steps: int
    truncated: dict[str, int]  # examples cut to fit the context, per split
    skipped_records: dict[str, Any]  # per input file: how many bad records, and examples

    def headline(self) -> str:
        return f"{self.task}, {self.steps} steps"


@dataclass
class SFTSummary(FinetuneSummary):
    examples: dict[str, int]
    rows: dict[str, int]
    dropped_prompt_too_long: dict[str, int]
    added_tokens: list[str]
    lora: bool
    initial_val_loss: float | None
    final_val_loss: float | None
    answers: list[dict[str, str]]  # {"prompt", "before", "after"}

    def headline(self) -> str:
        return (
            f"sft on {self.examples['train']:,} conversations, val loss "
            f"{self.initial_val_loss:.3f} -> {self.final_val_loss:.3f}"
        )


@dataclass
class DPOSummary(FinetuneSummary):
    pairs: dict[str, int]
    added_tokens: list[str]
    initial: dict[str, float]  # reward accuracy and margin on validation pairs, before
    final: dict[str, float]  # ... and after
    answers: list[dict[str, str]]


@dataclass
class ClassifySummary(FinetuneSummary):
    labels: list[str]
    examples: dict[str, int]
    initial: dict[str, Any]  # validation scores of the untrained head
    val: dict[str, Any]  # items, accuracy, macro_f1
    test: dict[str, Any]


@dataclass
class GRPOSummary(FinetuneSummary):
    prompts: dict[str, int]  # training tasks, and held-out ones scored at each evaluation
    added_tokens: list[str]
    initial: dict[str, Any]  # held-out pass@1 before: items, acc, acc_ci (95%)
    final: dict[str, Any]  # ... and after
    examples: dict[str, str]  # a held-out reply before and after

    def headline(self) -> str:
        (a, b), (c, d) = self.initial["acc_ci"], self.final["acc_ci"]
        return (
            f"grpo, {self.steps} steps, held-out pass@1 {100 * self.initial['acc']:.1f}% "
            f"({100 * a:.0f}-{100 * b:.0f}) -> {100 * self.final['acc']:.1f}% "
            f"({100 * c:.0f}-{100 * d:.0f})"
        )


SUMMARIES: dict[str, type[FinetuneSummary]] = {
    "sft": SFTSummary,
    "dpo": DPOSummary,
    "classify": ClassifySummary,
    "grpo": GRPOSummary,
}


def summary_from_dict(data: dict[str, Any]) -> FinetuneSummary:
    """A summary read back (summary.json, a manifest); TypeError if it has other fields."""
    return SUMMARIES[data["task"]](**data)
