"""The chain of stages, each writing one folder of the work directory, with a stage cache.

    <work>/curated/    curate      sources -> cleaned documents
    <work>/tokenizer/  tokenizer   documents -> tokenizer.json
    <work>/tokens/     tokenize    documents + tokenizer -> token shards
    <work>/runs/NAME/  pretrain    token shards -> checkpoints
    <work>/runs/NAME-TASK/  finetune   pretrained run -> tuned run (only if finetune.data is set)
    <work>/samples/    sample      checkpoint -> text before and after training
    <work>/eval/       eval        checkpoint + held-out tokens -> eval.json, eval.md

Each stage ends by writing `manifest.json` (atomically, last) with a key: the hash of its
settings, of its upstream stages' outputs and of its source files. A stage whose manifest
key matches and whose outputs are all present is skipped; a stage interrupted before its
manifest was written has no manifest, so it runs again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from scratchlm import __version__
from scratchlm.config import Recipe
from scratchlm.data.curate import curate, iter_curated_texts
from scratchlm.data.report import CurateSummary
from scratchlm.data.sources import fingerprint_sources
from scratchlm.device import resolve_device
from scratchlm.errors import StageError
from scratchlm.eval.evaluate import evaluate_path, input_files
from scratchlm.eval.report import EvalSummary, write_report
from scratchlm.finetune.stage import finetune
from scratchlm.finetune.summaries import FinetuneSummary, summary_from_dict
from scratchlm.infer.generate import SampleSummary, before_after_samples
from scratchlm.io import atomic_dir, atomic_write_json, atomic_write_text, file_sha256, json_sha256
from scratchlm.tokenizer.shards import TokenizeSummary, tokenize_corpus
from scratchlm.tokenizer.tokenizer import load_tokenizer
from scratchlm.tokenizer.train import TokenizerSummary, train_tokenizer_stage
from scratchlm.train.distributed import is_main_process
from scratchlm.train.loop import PretrainSummary, pretrain

STAGES = ("curate", "tokenizer", "tokenize", "pretrain", "finetune", "sample", "eval")
SECTIONS = {  # which recipe sections decide each stage's output
    "curate": ("curate",),
    "tokenizer": ("tokenizer",),
    "tokenize": ("tokenize",),
    "pretrain": ("model", "pretrain"),
    "finetune": ("finetune",),
    "sample": ("generate",),
    "eval": ("eval",),
}
UPSTREAM = {
    "curate": (),
    "tokenizer": ("curate",),
    "tokenize": ("curate", "tokenizer"),
    "pretrain": ("tokenizer", "tokenize"),
    "finetune": ("pretrain",),
    "sample": ("pretrain",),
    "eval": ("tokenize", "pretrain"),
}
# Settings that change only how fast a stage runs, never what it writes: not part of its key.
SPEED_ONLY = {
    "curate": {"workers", "executor"},
    "tokenizer": {"workers"},
    "tokenize": {"threads"},
    "finetune": {"threads"},
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
# The command that runs each stage on its own (sample runs only inside `scratchlm run`).
COMMANDS = {
    "curate": "curate",
    "tokenizer": "tokenizer train",
    "tokenize": "tokenize",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "sample": "run",
    "eval": "eval",
}


@dataclass(frozen=True)
class Workspace:
    root: Path
    run_name: str
    finetune_name: str = ""

    def out(self, stage: str) -> Path:
        if stage == "pretrain":
            return self.root / "runs" / self.run_name
        if stage == "finetune":
            return self.root / "runs" / (self.finetune_name or f"{self.run_name}-finetune")
        return self.root / FOLDERS[stage]

    @classmethod
    def for_recipe(cls, recipe: Recipe, root: str | Path | None = None) -> Workspace:
        ft = recipe.finetune
        return cls(
            Path(root) if root else Path("work") / recipe.name,
            recipe.pretrain.name,
            ft.name or f"{recipe.pretrain.name}-{ft.task}",
        )


def enabled(stage: str, recipe: Recipe) -> bool:
    """Fine-tuning is the one optional stage: it runs when the recipe names its data."""
    return stage != "finetune" or bool(recipe.finetune.data)


@dataclass
class StageResult:
    stage: str
    ran: bool
    seconds: float
    out: Path
    summary: Summary


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
    for up in UPSTREAM[stage]:
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
    return json_sha256(payload)


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


def _outputs(out: Path) -> dict[str, dict[str, Any]]:
    """Every output file with its size and content hash (settings.yaml: already in the key)."""
    files = sorted(
        p for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST, "settings.yaml")
    )
    return {
        str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": _content_hash(p)}
        for p in files
    }


def is_fresh(stage: str, key: str, ws: Workspace) -> bool:
    out = ws.out(stage)
    manifest = read_manifest(out)
    if manifest is None or manifest.get("key") != key:
        return False
    for rel, info in manifest["outputs"].items():
        p = out / rel
        if not p.is_file() or p.stat().st_size != info["size"]:
            return False
    return True


# --------------------------------------------------------------------------- the stages


class Summary(Protocol):
    """What a stage reports: a dataclass (saved in its manifest) with a one-line headline."""

    def headline(self) -> str: ...


def _run_curate(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> CurateSummary:
    return CurateSummary.from_report(curate(recipe.curate, out, progress))


def _run_tokenizer(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> TokenizerSummary:
    texts = iter_curated_texts(ws.out("curate"))
    return train_tokenizer_stage(texts, recipe.tokenizer, out, progress)


def _run_tokenize(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> TokenizeSummary:
    tok = load_tokenizer(ws.out("tokenizer") / "tokenizer.json")
    texts = iter_curated_texts(ws.out("curate"))
    return TokenizeSummary.from_meta(tokenize_corpus(texts, tok, recipe.tokenize, out, progress))


def _run_pretrain(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> PretrainSummary:
    tokenizer = ws.out("tokenizer") / "tokenizer.json"
    return pretrain(recipe, ws.out("tokenize"), tokenizer, out, progress)


def _run_finetune(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> FinetuneSummary:
    return finetune(recipe.finetune, ws.out("pretrain"), out, progress)


def _run_sample(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> SampleSummary:
    samples = before_after_samples(ws.out("pretrain"), recipe.generate, recipe.pretrain.seed)
    atomic_write_json(out / "samples.json", samples)
    return SampleSummary(samples)


def _run_eval(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> EvalSummary:
    s = recipe.eval
    if not s.heldout:  # the pipeline's own held-out split
        s = dataclasses.replace(s, heldout=str(ws.out("tokenize")))
    device = resolve_device(recipe.pretrain.device, "pretrain.device")
    if s.quantize == "int8":  # int8 weights are for the CPU, wherever training ran
        device = resolve_device("cpu")
    result = evaluate_path(ws.out("pretrain"), s, device=str(device))
    write_report(out, result)
    return EvalSummary.from_result(result)


RUNNERS: dict[str, Callable[[Recipe, Workspace, Path, bool], Summary]] = {
    "curate": _run_curate,
    "tokenizer": _run_tokenizer,
    "tokenize": _run_tokenize,
    "pretrain": _run_pretrain,
    "finetune": _run_finetune,
    "sample": _run_sample,
    "eval": _run_eval,
}
SUMMARIES: dict[str, Callable[..., Summary]] = {
    "curate": CurateSummary,
    "tokenizer": TokenizerSummary,
    "tokenize": TokenizeSummary,
    "pretrain": PretrainSummary,
    "sample": SampleSummary,
    "eval": EvalSummary,
}


def _saved_summary(stage: str, manifest: dict[str, Any]) -> Summary | None:
    """The summary a manifest holds, or None if it was written in another shape."""
    data = manifest.get("summary", {})
    try:
        return summary_from_dict(data) if stage == "finetune" else SUMMARIES[stage](**data)
    except (TypeError, KeyError):
        return None


def run_stage(
    stage: str, recipe: Recipe, ws: Workspace, *, force: bool = True, progress: bool = True
) -> StageResult:
    """Run one stage (or skip it when fresh and not forced) and write its manifest."""
    key = stage_key(stage, recipe, ws)
    out = ws.out(stage)
    if not force and is_fresh(stage, key, ws):
        summary = _saved_summary(stage, read_manifest(out) or {})
        if summary is not None:
            return StageResult(stage, False, 0.0, out, summary)
    start = time.time()
    settings_yaml = yaml.safe_dump(
        {sec: dataclasses.asdict(getattr(recipe, sec)) for sec in SECTIONS[stage]}, sort_keys=False
    )
    if stage == "pretrain":
        # A run folder is trained in place (checkpoints appear as it goes). An earlier attempt
        # is discarded so the new run starts clean, unless asked to resume from it.
        if recipe.pretrain.resume != "auto" and is_main_process():
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        summary = RUNNERS[stage](recipe, ws, out, progress)
        if not is_main_process():  # under torchrun: rank 0 alone writes the manifest
            return StageResult(stage, True, round(time.time() - start, 2), out, summary)
        atomic_write_text(out / "settings.yaml", settings_yaml)
    elif stage == "finetune":  # builds its run folder atomically itself
        summary = RUNNERS[stage](recipe, ws, out, progress)
        atomic_write_text(out / "settings.yaml", settings_yaml)
    else:
        # The folder appears under its name only when the stage succeeded.
        with atomic_dir(out) as tmp:
            summary = RUNNERS[stage](recipe, ws, tmp, progress)
            atomic_write_text(tmp / "settings.yaml", settings_yaml)
    outputs = _outputs(out)
    seconds = round(time.time() - start, 2)
    atomic_write_json(
        out / MANIFEST,
        {
            "stage": stage,
            "key": key,
            "digest": json_sha256(outputs),
            "outputs": outputs,
            "summary": dataclasses.asdict(summary),  # type: ignore[call-overload]
            "seconds": seconds,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return StageResult(stage, True, seconds, out, summary)


def run_pipeline(
    recipe: Recipe,
    ws: Workspace,
    force: tuple[str, ...] = (),
    progress: bool = True,
    on_result: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run every stage in order, skipping the fresh ones. A forced stage re-runs; so does
    everything downstream of it whose inputs changed as a result."""
    unknown = set(force) - set(STAGES)
    if unknown:
        raise StageError(
            f"--force {', '.join(sorted(unknown))}: not a stage; stages are {', '.join(STAGES)}"
        )
    results = []
    for stage in (s for s in STAGES if enabled(s, recipe)):
        result = run_stage(stage, recipe, ws, force=stage in force, progress=progress)
        if on_result:
            on_result(result)
        results.append(result)
    return results
