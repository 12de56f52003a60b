"""`scratchlm finetune {sft,classify,dpo}` and `scratchlm classify`, which uses what classify made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scratchlm.cli.common import FORMATTER, add_set, settings_help
from scratchlm.config import FinetuneSettings, recipe_from_dict
from scratchlm.errors import SettingsError, StageError
from scratchlm.finetune.classify import classify_texts
from scratchlm.finetune.stage import finetune
from scratchlm.finetune.summaries import (
    ClassifySummary,
    DPOSummary,
    FinetuneSummary,
    GRPOSummary,
    SFTSummary,
)
from scratchlm.settings import apply_overrides


def add_parsers(sub: Any) -> None:
    desc = (
        "Fine-tune a pretrained run (or an HF folder): sft on conversations, classify with a "
        "head, dpo on preference pairs, or grpo (RL) on prompts whose answers a verifier checks "
        "-> <base>-<task> beside the base run"
    )
    p = sub.add_parser(
        "finetune",
        help="Fine-tune a run: sft, classify, dpo or grpo",
        description=desc,
        epilog=settings_help(("finetune",)),
        formatter_class=FORMATTER,
    )
    p.add_argument("task", choices=["sft", "classify", "dpo", "grpo"])
    p.add_argument("base", help="a run folder (e.g. work/demo/runs/demo) or an HF model folder")
    p.add_argument(
        "--data", help="training data: .jsonl, .json, .csv or builtin:shakespeare-dialogue, ..."
    )
    p.add_argument("--out", metavar="DIR", help="the run folder to write (default: <base>-<task>)")
    p.add_argument("--lora", type=int, metavar="RANK", help="train LoRA adapters of this rank")
    p.add_argument("--merge", action="store_true", help="LoRA: save merged full weights")
    add_set(p, "finetune.lr=3e-4")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_finetune)

    desc = "Label texts with a classification run (from `scratchlm finetune classify`)"
    p = sub.add_parser("classify", help=desc, description=desc)
    p.add_argument("run", help="a classification run folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", help="a text to label (repeatable)")
    what.add_argument("--input", metavar="FILE", help="a file with one text per line")
    p.set_defaults(handler=cmd_classify)


def _settings(args: argparse.Namespace) -> FinetuneSettings:
    values: dict[str, Any] = {"task": args.task}
    if args.data:
        values["data"] = args.data
    if args.lora:
        values["lora_rank"] = args.lora
    if args.merge:
        values["merge"] = True
    s = recipe_from_dict(apply_overrides({"finetune": values}, args.overrides)).finetune
    if s.task != args.task:
        raise SettingsError(f"finetune.task={s.task} disagrees with the command's task {args.task}")
    return s


def cmd_finetune(args: argparse.Namespace) -> None:
    s = _settings(args)
    base = Path(args.base)
    out = Path(args.out) if args.out else base.parent / (s.name or f"{base.name}-{s.task}")
    kept: list[Path] = []
    summary = finetune(s, base, out, progress=not args.quiet, on_kept=kept.append)
    print_summary(summary, out)
    for path in kept:
        print(f"  the run that was in {out} is kept as {path}")


def print_summary(summary: FinetuneSummary, out: Path) -> None:
    print(f"{out}: {summary.task}, {summary.steps} steps")
    for src, info in summary.skipped_records.items():
        print(f"  skipped {info['count']} record(s) of {src}, e.g. {info['examples'][0]}")
    if any(summary.truncated.values()):
        cut = ", ".join(f"{n} {split}" for split, n in summary.truncated.items())
        print("  cut to fit the context: " + cut)
    if isinstance(summary, (SFTSummary, DPOSummary)) and summary.added_tokens:
        print(f"  added tokens: {' '.join(summary.added_tokens)}")
    if isinstance(summary, SFTSummary):
        print(f"  val loss {summary.initial_val_loss} -> {summary.final_val_loss}")
    elif isinstance(summary, DPOSummary):
        i, f = summary.initial, summary.final
        print(
            f"  reward accuracy {i.get('reward_accuracy')} -> {f.get('reward_accuracy')}, margin {i.get('reward_margin')} -> {f.get('reward_margin')}"
        )
    elif isinstance(summary, GRPOSummary):
        print(f"  {summary.headline()}")
        print(f"  a held-out reply before: {summary.examples['before']!r}")
        print(f"  and after:               {summary.examples['after']!r}")
    elif isinstance(summary, ClassifySummary):
        for split, r in (("val", summary.val), ("test", summary.test)):
            if r.get("items"):
                print(
                    f"  {split}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f} on {r['items']} items"
                )
        print(f"  report: {out / 'report.json'}, confusion_val.png, confusion_test.png")
    if isinstance(summary, (SFTSummary, DPOSummary)):
        for a in summary.answers:
            print(f"\n--- {a['prompt']!r}\n  before: {a['before']!r}\n  after:  {a['after']!r}")


def cmd_classify(args: argparse.Namespace) -> None:
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise StageError(f"--input {path}: no such file")
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = args.text
    for result in classify_texts(args.run, texts):
        print(json.dumps(result, ensure_ascii=False))
