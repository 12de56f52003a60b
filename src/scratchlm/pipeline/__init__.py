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

The two stages that train (pretrain, finetune) never delete a trained run: when their settings
changed, the run there is kept beside the new one (runs.keep_aside: NAME.YYYYMMDD-HHMMSS), and
when the settings come back to those of a kept run, that run is put back instead of training
again. `--resume` on a run already at pretrain.max_steps changes nothing and says so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import yaml

from scratchlm import runs
from scratchlm.config import Recipe
from scratchlm.errors import StageError
from scratchlm.finetune.stage import finetune
from scratchlm.io import atomic_dir, atomic_write_json, atomic_write_text, json_sha256
from scratchlm.pipeline.cache import (
    COMMANDS,
    MANIFEST,
    SECTIONS,
    STAGES,
    StageResult,
    Workspace,
    base_of,
    enabled,
    is_fresh,
    output_files,
    outputs_intact,
    read_manifest,
    stage_key,
)
from scratchlm.pipeline.stages import RUNNERS, refresh_card, saved_summary
from scratchlm.train.distributed import is_main_process


def run_stage(
    stage: str, recipe: Recipe, ws: Workspace, *, force: bool = True, progress: bool = True
) -> StageResult:
    """Run one stage (or skip it when fresh and not forced) and write its manifest."""
    key = stage_key(stage, recipe, ws)
    out = ws.out(stage)
    if not force and is_fresh(stage, key, ws):
        summary = saved_summary(stage, read_manifest(out) or {})
        if summary is not None:
            return StageResult(stage, False, 0.0, out, summary)
    if stage == "pretrain" and (done := _nothing_to_resume(recipe, out)):
        return done
    trains = stage in ("pretrain", "finetune", "rl") and not force and is_main_process()
    if trains and (restored := _put_back_kept(stage, key, out)):
        return restored
    start = time.time()
    note = ""
    settings_yaml = yaml.safe_dump(
        {sec: dataclasses.asdict(getattr(recipe, sec)) for sec in SECTIONS[stage]}, sort_keys=False
    )
    if stage == "pretrain":
        # A run folder is trained in place (checkpoints appear as it goes). Unless asked to
        # resume, the new run starts clean, and a trained one there is kept beside it.
        if recipe.pretrain.resume != "auto" and is_main_process():
            note = _kept_note(runs.keep_aside(out))
        summary = RUNNERS[stage](recipe, ws, out, progress)
        if not is_main_process():  # under torchrun: rank 0 alone writes the manifest
            return StageResult(stage, True, round(time.time() - start, 2), out, summary)
        atomic_write_text(out / "settings.yaml", settings_yaml)
    elif stage in ("finetune", "rl"):  # builds its run folder atomically, keeping the one there
        kept: list[Path] = []
        settings = recipe.finetune if stage == "finetune" else recipe.rl
        summary = finetune(settings, base_of(stage, recipe, ws), out, progress, kept.append)
        note = _kept_note(kept[0] if kept else None)
        atomic_write_text(out / "settings.yaml", settings_yaml)
    else:
        # The folder appears under its name only when the stage succeeded.
        with atomic_dir(out) as tmp:
            summary = RUNNERS[stage](recipe, ws, tmp, progress)
            atomic_write_text(tmp / "settings.yaml", settings_yaml)
    outputs = output_files(out)
    seconds = round(time.time() - start, 2)
    atomic_write_json(
        out / MANIFEST,
        {
            "stage": stage,
            "key": key,
            # of the contents alone: a report's size changes with its timings ("1.5" / "1.52")
            "digest": json_sha256({name: f["sha256"] for name, f in outputs.items()}),
            "outputs": outputs,
            "summary": dataclasses.asdict(summary),  # type: ignore[call-overload]
            "seconds": seconds,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    if stage in ("curate", "tokenize"):
        refresh_card(recipe, ws)
    return StageResult(stage, True, seconds, out, summary, note)


def _kept_note(kept: Path | None) -> str:
    return f"the run that was there is kept as {kept}" if kept else ""


def _put_back_kept(stage: str, key: str, out: Path) -> StageResult | None:
    """A run kept aside by an earlier re-run whose settings and inputs are the ones asked for
    now goes back under its name, instead of being trained again."""
    for kept in runs.kept_runs(out):
        summary = saved_summary(stage, read_manifest(kept) or {})
        if summary is not None and outputs_intact(kept, key):
            aside = runs.swap_in(kept, out)
            note = f"put back the run kept as {kept} (trained with these settings)"
            note += f"; {_kept_note(aside)}" if aside else ""
            return StageResult(stage, False, 0.0, out, summary, note)
    return None


def _nothing_to_resume(recipe: Recipe, out: Path) -> StageResult | None:
    """--resume of a run already at (or past) pretrain.max_steps: nothing is trained and
    nothing is written (config.yaml and the manifest stay, so later stages stay done)."""
    ckpts = runs.checkpoints(out)
    if recipe.pretrain.resume != "auto" or not ckpts:
        return None
    step = int(runs.read_meta(ckpts[-1])["step"])
    if step < recipe.pretrain.max_steps:
        return None
    why = (
        f"{out} is at step {step}, pretrain.max_steps={recipe.pretrain.max_steps}: nothing to "
        "resume, nothing changed (a larger pretrain.max_steps trains on)"
    )
    summary = saved_summary("pretrain", read_manifest(out) or {})
    if summary is None:  # an interrupted run: there is no summary to show
        raise StageError(why)
    return StageResult("pretrain", False, 0.0, out, summary, why)


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


__all__ = [  # the chain, and what callers read of the cache
    "COMMANDS", "MANIFEST", "SECTIONS", "STAGES", "StageResult", "Workspace", "is_fresh",
    "read_manifest", "run_pipeline", "run_stage", "stage_key",
]  # fmt: skip
