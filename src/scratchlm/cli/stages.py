"""`scratchlm run` (the whole chain) and the stage commands: curate, tokenize, pretrain, and
`curate train-quality`, the quality classifier's trainer."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Any

import torch

from scratchlm.cli.common import (
    FORMATTER,
    add_recipe_args,
    default_recipe,
    print_result,
    recipe_of,
    settings_help,
)
from scratchlm.config import Recipe
from scratchlm.data.fasttext_models import train_quality
from scratchlm.data.sources import iter_documents
from scratchlm.device import resolve_device
from scratchlm.errors import SettingsError
from scratchlm.finetune.summaries import DPOSummary, GRPOSummary, SFTSummary
from scratchlm.pipeline import SECTIONS, STAGES, Workspace, run_pipeline, run_stage, stage_key
from scratchlm.train.distributed import check_settings, is_main_process, launched
from scratchlm.train.metrics import check_loggers

DESCRIPTIONS = {  # stage -> what its command does
    "curate": "Read sources, run the curate.steps (filters, language ID, quality, PII, dedup) -> "
    "<work>/curated. `scratchlm curate train-quality --help`: train the quality classifier",
    "tokenizer": "Train a byte-level BPE tokenizer on the curated text -> <work>/tokenizer",
    "tokenize": "Encode the curated text into train/val token shards -> <work>/tokens",
    "pretrain": "Pretrain the model on the token shards -> <work>/runs/<name>",
}


def help_sections(stages: tuple[str, ...]) -> tuple[str, ...]:
    """The recipe sections that decide what these stages do: their own, and how pretraining
    spreads over processes."""
    sections = [sec for st in stages for sec in SECTIONS[st]]
    if "pretrain" in stages:
        sections.insert(sections.index("pretrain") + 1, "parallel")
    return tuple(sections)


def add_parsers(sub: Any) -> None:
    demo = default_recipe()
    p = sub.add_parser(
        "run",
        help="Run every stage in order, skipping those already done",
        description="Run every stage in order into one work folder, skipping stages whose inputs and settings are unchanged.",
        epilog=settings_help(help_sections(STAGES), demo),
        formatter_class=FORMATTER,
    )
    add_recipe_args(p)
    p.add_argument(
        "--force",
        metavar="STAGE",
        action="append",
        default=[],
        choices=STAGES,
        help=f"re-run this stage even if it is done ({', '.join(STAGES)}; repeatable)",
    )
    p.set_defaults(handler=cmd_run)
    for stage in ("curate", "tokenize", "pretrain"):
        p = sub.add_parser(
            stage,
            help=DESCRIPTIONS[stage],
            description=DESCRIPTIONS[stage],
            epilog=settings_help(help_sections((stage,)), demo),
            formatter_class=FORMATTER,
        )
        add_recipe_args(p)
        p.set_defaults(handler=cmd_stage, stage=stage)
    p.add_argument(  # pretrain's own
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes of this machine (e.g. its GPUs): the recipe and the layout "
        "are checked first, then torchrun starts them (several machines: run torchrun yourself)",
    )


def cmd_stage(args: argparse.Namespace) -> None:
    """One stage of the chain, always run (its inputs come from the work folder)."""
    recipe = recipe_of(args)
    ws = Workspace.for_recipe(recipe, args.work)
    if getattr(args, "nproc_per_node", 1) != 1 and not launched():
        launch_pretrain(args, recipe, ws)
        return
    result = run_stage(args.stage, recipe, ws, force=True, progress=not args.quiet)
    if is_main_process():  # under torchrun, one summary line, not one per rank
        print_result(result)


def launch_pretrain(args: argparse.Namespace, recipe: Recipe, ws: Workspace) -> None:
    """`scratchlm pretrain --nproc-per-node N`: everything that can be checked is checked
    here, in one process, and every problem is said at once, before any worker starts (a
    worker that refuses its settings under torchrun leaves torchrun's own failure report
    below the message). Then torchrun starts N workers running `scratchlm pretrain`."""
    n = args.nproc_per_node
    if n < 1:
        raise SettingsError(f"--nproc-per-node {n}: expected a number of processes >= 1")
    stage_key("pretrain", recipe, ws)  # the token shards are there (else: what makes them)
    device = resolve_device(recipe.pretrain.device, "pretrain.device")
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise SettingsError(
            f"--nproc-per-node {n}: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    check_settings(recipe.parallel, recipe.model, recipe.pretrain, n, device.type)
    check_loggers(recipe.pretrain.loggers)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(n), "-m", "scratchlm", "pretrain"]
    cmd += [args.recipe] if args.recipe else []
    cmd += ["--work", args.work] if args.work else []
    cmd += [arg for o in args.overrides for arg in ("--set", o)]
    cmd += ["-q"] * args.quiet + ["--resume"] * args.resume
    if code := subprocess.call(cmd):
        raise SystemExit(code)  # the workers have said why


def cmd_run(args: argparse.Namespace) -> None:
    recipe = recipe_of(args)
    if launched():  # every rank would curate and tokenize into the same folders at once
        raise SettingsError(
            "scratchlm run under torchrun: run the stages before pretraining once (`scratchlm "
            "run --set pretrain.max_steps=...` or `scratchlm tokenize`), then `torchrun ... -m "
            "scratchlm pretrain`"
        )
    ws = Workspace.for_recipe(recipe, args.work)
    print(f"scratchlm run {recipe.name}: work folder {ws.root}", flush=True)
    results = run_pipeline(
        recipe, ws, tuple(args.force), progress=not args.quiet, on_result=print_result
    )
    by_stage = {r.stage: r for r in results}
    for s in by_stage["sample"].summary.samples:
        print(f"\n--- prompt: {s['prompt']!r}")
        for who in ("untrained", "trained"):
            print(f"{who} model:\n  " + s[who].strip().replace("\n", "\n  "))
    tuned = by_stage.get("finetune")
    if tuned and isinstance(tuned.summary, (SFTSummary, DPOSummary)):
        for a in tuned.summary.answers:
            print(f"\n--- fine-tuning ({tuned.summary.task}), asked: {a['prompt']!r}")
            for who, text in (("pretrained", a["before"]), ("fine-tuned", a["after"])):
                print(f"{who} model answers:\n  " + text.strip().replace("\n", "\n  "))
    rl = by_stage.get("rl")
    if rl and isinstance(rl.summary, GRPOSummary):
        print(f"\n--- reinforcement learning: {rl.summary.headline()}")
        print(f"a held-out reply before: {rl.summary.examples['before']!r}")
        print(f"and after:               {rl.summary.examples['after']!r}")
    if "eval" in by_stage:
        print(f"\n--- evaluation ({by_stage['eval'].out / 'eval.md'})\n")
        print((by_stage["eval"].out / "eval.md").read_text(), end="")
    ran = sum(r.ran for r in results)
    print(
        f"\nDone: {ran} stage(s) ran, {len(results) - ran} skipped, "
        f"{sum(r.seconds for r in results):.1f} s.\n"
        + _where_and_next(args, recipe, ws, rl or tuned)
    )


def _where_and_next(args: argparse.Namespace, recipe: Recipe, ws: Workspace, tuned: Any) -> str:
    """Where each stage's output is, and the commands a user types next."""
    run_dir = ws.out("pretrain")
    prompt = _shell_quote(recipe.generate.prompts[0] if recipe.generate.prompts else "Hello")
    rec = f" {args.recipe}" if args.recipe else ""
    work = f" --work {args.work}" if args.work else ""
    kept = [
        o for o in args.overrides if not o.startswith(("pretrain.max_steps=", "pretrain.resume="))
    ]
    work += "".join(f" --set {shlex.quote(o)}" for o in kept)
    return (
        f"  curated documents  {ws.out('curate')}  (report.json says what was dropped and why)\n"
        f"  tokenizer          {ws.out('tokenizer')}/tokenizer.json\n"
        f"  token shards       {ws.out('tokenize')}\n"
        f"  model run          {run_dir}  (config.yaml, metrics.jsonl, checkpoints/)\n"
        + (f"  fine-tuned run     {tuned.out}\n" if tuned else "")
        + f"  evaluation         {ws.out('eval')}/eval.md\n"
        f"\nNext:\n"
        f"  scratchlm generate {run_dir} --prompt {prompt}\n"
        + (
            f"  scratchlm chat {tuned.out}             # talk to the fine-tuned model\n"
            if tuned
            else ""
        )
        + f"  scratchlm eval {run_dir}                # perplexity, bits per byte, tasks with 95% intervals\n"
        f"  scratchlm run{rec}{work} --set pretrain.max_steps={recipe.pretrain.max_steps * 2} --resume   # train longer, from the last checkpoint\n"
        f"  scratchlm run --help                                # every setting"
    )


def _shell_quote(text: str) -> str:
    """Quote for bash; a prompt with newlines uses $'...' so the command stays on one line."""
    if "\n" not in text:
        return shlex.quote(text)
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# --------------------------------------------------------------------------- curate train-quality


def quality_parser() -> argparse.ArgumentParser:
    desc = (
        "Train the fastText quality classifier that curate.steps=[..., quality] uses: "
        "examples of text to keep (--positive) and to drop (--negative), any source format"
    )
    p = argparse.ArgumentParser(prog="scratchlm curate train-quality", description=desc)
    p.add_argument("--positive", nargs="+", required=True, metavar="SOURCE")
    p.add_argument("--negative", nargs="+", required=True, metavar="SOURCE")
    p.add_argument("--out", required=True, metavar="DIR", help="where quality.bin goes")
    p.add_argument("--text-field", default="text", help="JSONL / Parquet field with the text")
    p.add_argument("--held-out", type=float, default=0.1, help="share kept for the report")
    p.add_argument("--epochs", type=int, default=10)
    return p


def cmd_train_quality(argv: list[str]) -> None:
    """`scratchlm curate train-quality ...` (a sub-command beside curate's recipe argument)."""
    args = quality_parser().parse_args(argv)
    if not 0 < args.held_out < 1:
        raise SettingsError(f"--held-out {args.held_out}: expected a share between 0 and 1")

    def texts(sources: list[str]) -> list[str]:
        return [d.text for d in iter_documents(sources, args.text_field)]

    report = train_quality(
        texts(args.positive), texts(args.negative), args.out, args.held_out, args.epochs
    )
    print(
        f"{report['model']}: held-out precision {report['precision']:.3f}, recall "
        f"{report['recall']:.3f}, accuracy {report['accuracy']:.3f} on "
        f"{report['examples']['held_out']} examples\n"
        f"use it: --set 'curate.steps=[normalize, quality, exact_dedup]' "
        f"--set curate.quality_model={report['model']}"
    )
