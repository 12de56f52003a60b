"""What each stage runs, and the typed summary it reports (saved in its manifest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchlm.config import Recipe
from scratchlm.data.card import write_card
from scratchlm.data.curate import curate, iter_curated_texts
from scratchlm.data.report import CurateSummary
from scratchlm.device import resolve_device
from scratchlm.errors import StageError
from scratchlm.eval.evaluate import evaluate_path
from scratchlm.eval.report import EvalSummary, phases_markdown, write_report
from scratchlm.finetune.summaries import summary_from_dict
from scratchlm.infer.generate import SampleSummary, before_after_samples
from scratchlm.io import atomic_write_json, atomic_write_text
from scratchlm.pipeline.cache import (
    Summary,
    Workspace,
    decontamination_inputs,
    enabled,
    is_fresh,
    stage_key,
)
from scratchlm.tokenizer.shards import TokenizeSummary, load_meta, tokenize_corpus
from scratchlm.tokenizer.tokenizer import load_tokenizer
from scratchlm.tokenizer.train import TokenizerSummary, train_tokenizer_stage
from scratchlm.train.loop import PretrainSummary, pretrain

# --------------------------------------------------------------------------- the stages


def _run_curate(recipe: Recipe, ws: Workspace, out: Path, progress: bool) -> CurateSummary:
    report = curate(recipe.curate, out, progress, decontamination_inputs(recipe))
    return CurateSummary.from_report(report)


def refresh_card(recipe: Recipe, ws: Workspace) -> None:
    """Rewrite the curated folder's dataset card, with the token counts of the token shards
    when they were made from this curated output (a fresh tokenize stage)."""
    curated = ws.out("curate")
    if not (curated / "report.json").is_file():
        return
    tokens = None
    try:
        if is_fresh("tokenize", stage_key("tokenize", recipe, ws), ws):
            tokens = load_meta(ws.out("tokenize"))
    except StageError:  # no tokenizer or curate manifest yet: no token counts
        pass
    write_card(curated, tokens)


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
    phases = [p for p in s.runs if enabled(p, recipe)] or ["pretrain"]
    results = {phase: evaluate_path(ws.out(phase), s, device=str(device)) for phase in phases}
    write_report(out, results[phases[0]])  # eval.json, eval.md: as for one run
    summary = EvalSummary.from_result(results[phases[0]], phases[0])
    if len(phases) > 1:  # each other run in a folder of its own; eval.md holds them all
        for phase in phases[1:]:
            write_report(out / phase, results[phase])
            summary.others.append(EvalSummary.from_result(results[phase], phase))
        atomic_write_text(out / "eval.md", phases_markdown(results))
    return summary


RUNNERS: dict[str, Callable[[Recipe, Workspace, Path, bool], Summary]] = {
    "curate": _run_curate,
    "tokenizer": _run_tokenizer,
    "tokenize": _run_tokenize,
    "pretrain": _run_pretrain,
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


def saved_summary(stage: str, manifest: dict[str, Any]) -> Summary | None:
    """The summary a manifest holds, or None if it was written in another shape."""
    data = manifest.get("summary", {})
    try:
        if stage in ("finetune", "rl"):
            return summary_from_dict(data)
        return SUMMARIES[stage](**data)
    except (TypeError, KeyError):
        return None
