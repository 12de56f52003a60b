"""The stage cache: which stages exist, the key of a stage (its settings, its upstream
stages' outputs, its source files), the manifest that records it, and whether a stage is fresh."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scratchlm import __version__
from scratchlm.config import Recipe
from scratchlm.data.benchmarks import benchmark_fingerprint, expand_specs
from scratchlm.data.card import CARD
from scratchlm.data.sources import fingerprint_sources
from scratchlm.errors import StageError
from scratchlm.eval.evaluate import input_files
from scratchlm.eval.tasks import BUILTIN_TASKS
from scratchlm.io import file_sha256, json_sha256

STAGES = ("curate", "tokenizer", "tokenize", "pretrain", "finetune", "rl", "sample", "eval")
SECTIONS = {  # which recipe sections decide each stage's output
    "curate": ("curate",),
    "tokenizer": ("tokenizer",),
    "tokenize": ("tokenize",),
    "pretrain": ("model", "pretrain"),
    "finetune": ("finetune",),
    "rl": ("rl",),
    "sample": ("generate",),
    "eval": ("eval",),
}
UPSTREAM = {
    "curate": (),
    "tokenizer": ("curate",),
    "tokenize": ("curate", "tokenizer"),
    "pretrain": ("tokenizer", "tokenize"),
    "finetune": ("pretrain",),
    "rl": ("pretrain", "finetune"),  # the fine-tuned run when there is one (enabled)
    "sample": ("pretrain",),
    "eval": ("tokenize", "pretrain", "finetune", "rl"),  # those eval.runs names
}
# Settings that change only how fast a stage runs, never what it writes: not part of its key.
SPEED_ONLY = {
    "curate": {"workers", "executor"},
    "tokenizer": {"workers"},
    "tokenize": {"threads"},
    "finetune": {"threads"},
    "rl": {"threads"},
    "eval": {"batch_size", "bootstrap", "every_steps"},
}
# What a report says about timing changes from run to run; the output digest ignores it.
VOLATILE_KEYS = {"seconds", "tokens_per_second"}
FOLDERS = {
    "curate": "curated",
    "tokenizer": "tokenizer",
    "tokenize": "tokens",
    "sample": "samples",
    "eval": "eval",
}
MANIFEST = "manifest.json"
# Not tracked in a manifest: settings.yaml is already in the key; the dataset card is a view of
# report.json that `tokenize` rewrites with its token counts (data/card.py).
UNTRACKED = (MANIFEST, "settings.yaml", CARD)
# The command that runs each stage on its own (sample runs only inside `scratchlm run`).
COMMANDS = {
    "curate": "curate",
    "tokenizer": "tokenizer train",
    "tokenize": "tokenize",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "rl": "finetune grpo",
    "sample": "run",
    "eval": "eval",
}


@dataclass(frozen=True)
class Workspace:
    root: Path
    run_name: str
    finetune_name: str = ""
    rl_name: str = ""

    def out(self, stage: str) -> Path:
        if stage == "pretrain":
            return self.root / "runs" / self.run_name
        if stage == "finetune":
            return self.root / "runs" / (self.finetune_name or f"{self.run_name}-finetune")
        if stage == "rl":
            return self.root / "runs" / (self.rl_name or f"{self.run_name}-grpo")
        return self.root / FOLDERS[stage]

    @classmethod
    def for_recipe(cls, recipe: Recipe, root: str | Path | None = None) -> Workspace:
        ft, rl = recipe.finetune, recipe.rl
        finetune_name = ft.name or f"{recipe.pretrain.name}-{ft.task}"
        rl_base = finetune_name if ft.data else recipe.pretrain.name
        return cls(
            Path(root) if root else Path("work") / recipe.name,
            recipe.pretrain.name,
            finetune_name,
            rl.name or f"{rl_base}-{rl.task}",
        )


def enabled(stage: str, recipe: Recipe) -> bool:
    """Fine-tuning and RL are the optional stages: each runs when the recipe names its data."""
    if stage == "finetune":
        return bool(recipe.finetune.data)
    if stage == "rl":
        return bool(recipe.rl.data)
    return True


def upstream(stage: str, recipe: Recipe) -> list[str]:
    """The stages whose outputs `stage` reads in this recipe."""
    ups = [up for up in UPSTREAM[stage] if enabled(up, recipe)]
    if stage == "rl" and "finetune" in ups:  # GRPO starts from the fine-tuned run
        ups.remove("pretrain")
    if stage == "eval":
        ups = [u for u in ups if u == "tokenize" or u in recipe.eval.runs or u == "pretrain"]
    return ups


def base_of(stage: str, recipe: Recipe, ws: Workspace) -> Path:
    """The run a fine-tuning stage starts from."""
    if stage == "rl" and enabled("finetune", recipe):
        return ws.out("finetune")
    return ws.out("pretrain")


class Summary(Protocol):
    """What a stage reports: a dataclass (saved in its manifest) with a one-line headline."""

    def headline(self) -> str: ...


@dataclass
class StageResult:
    stage: str
    ran: bool
    seconds: float
    out: Path
    summary: Summary
    note: str = ""  # what else happened: a run kept aside or put back, nothing to resume


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None


def stage_key(stage: str, recipe: Recipe, ws: Workspace) -> str:
    payload: dict[str, Any] = {
        "stage": stage,
        "version": __version__,
        "settings": {sec: _settings(recipe, sec) for sec in SECTIONS[stage]},
        "upstream": {},
    }
    for up in upstream(stage, recipe):
        manifest = read_manifest(ws.out(up))
        if manifest is None:
            raise StageError(
                f"stage {stage} needs the output of stage {up} in {ws.out(up)}: run `scratchlm {COMMANDS[up]}` first"
            )
        payload["upstream"][up] = manifest["digest"]
    if stage == "pretrain" and recipe.eval.every_steps:  # the hook's scores are in its metrics
        payload["settings"]["eval"] = _settings(recipe, "eval") | {
            "every_steps": recipe.eval.every_steps
        }
    if stage == "eval":
        payload["files"] = {str(p): file_sha256(p) for p in input_files(recipe.eval)}
    if stage == "curate":
        payload["sources"] = fingerprint_sources(recipe.curate.sources)
        if "decontaminate" in recipe.curate.steps:  # an edited benchmark file re-runs curation
            specs = [*recipe.curate.decontaminate_against, *decontamination_inputs(recipe)]
            payload["benchmarks"] = {s: benchmark_fingerprint(s) for s in expand_specs(specs)}
    return json_sha256(payload)


def decontamination_inputs(recipe: Recipe) -> list[str]:
    """What the curate stage's decontaminate step checks besides curate.decontaminate_against:
    the eval section's task files, and its held-out text when that is a file of another source
    (the pipeline's own validation split is held out from the same documents already)."""
    if "decontaminate" not in recipe.curate.steps:
        return []
    specs = [t for t in recipe.eval.tasks if t not in BUILTIN_TASKS]
    heldout = Path(recipe.eval.heldout)
    if recipe.eval.heldout and heldout.is_file() and heldout.suffix != ".bin":
        specs.append(recipe.eval.heldout)
    return specs


def _settings(recipe: Recipe, section: str) -> dict[str, Any]:
    values = dataclasses.asdict(getattr(recipe, section))
    return {k: v for k, v in values.items() if k not in SPEED_ONLY.get(section, set())}


def _content_hash(path: Path) -> str:
    """A file's hash; for a JSON report, of its content without the timings in it, so that a
    stage re-run with the same result leaves the stages after it alone."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return file_sha256(path)
        if isinstance(data, dict):
            return json_sha256({k: v for k, v in data.items() if k not in VOLATILE_KEYS})
    return file_sha256(path)


def output_files(out: Path) -> dict[str, dict[str, Any]]:
    """Every output file with its size and content hash (settings.yaml: already in the key)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in UNTRACKED)
    return {
        str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": _content_hash(p)}
        for p in files
    }


def is_fresh(stage: str, key: str, ws: Workspace) -> bool:
    return outputs_intact(ws.out(stage), key)


def outputs_intact(out: Path, key: str) -> bool:
    """`out` holds what a stage with this key wrote, every output file still there."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("key") != key:
        return False
    for rel, info in manifest["outputs"].items():
        p = out / rel
        if not p.is_file() or p.stat().st_size != info["size"]:
            return False
    return True
