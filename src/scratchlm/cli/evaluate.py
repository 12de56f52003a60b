"""`scratchlm eval`: score a run (or compare two) and write eval.json / eval.md beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scratchlm import runs
from scratchlm.cli.common import FORMATTER, FROM_RUN, add_set, settings_help
from scratchlm.config import EvalSettings
from scratchlm.device import resolve_device
from scratchlm.errors import SettingsError, StageError
from scratchlm.eval.evaluate import evaluate_path
from scratchlm.eval.report import (
    compare,
    compare_markdown,
    markdown,
    overlap_warnings,
    read_report,
    write_report,
)


def add_parsers(sub: Any) -> None:
    # argparse %-formats help strings: a literal percent sign is written %%.
    desc = "Evaluate a run: perplexity, bits per byte and multiple-choice tasks with 95%% intervals"
    p = sub.add_parser(
        "eval",
        help=desc,
        description=desc.replace("%%", "%") + ". Writes eval.json and eval.md into the run folder.",
        epilog=settings_help(("eval",), note=FROM_RUN),
        formatter_class=FORMATTER,
    )
    p.add_argument("run", nargs="?", help="a run folder, or an HF folder from `export hf`")
    p.add_argument(
        "--task",
        action="append",
        metavar="NAME_OR_FILE",
        help="cloze, shuffle, or a task file (.jsonl/.csv, FORMAT:PATH); repeatable (default: eval.tasks)",
    )
    p.add_argument(
        "--text",
        action="append",
        metavar="FILE",
        help="held-out text (.txt/.md/.jsonl) or token shard (.bin, a tokens folder) for perplexity and built-in tasks (default: eval.heldout)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="is B better than A beyond the noise? (reads their eval.json, or evaluates)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="int8: score with int8 linear layers on the CPU (= --set eval.quantize=int8)",
    )
    add_set(p, "eval.few_shot=5")
    p.set_defaults(handler=cmd_eval)


def _settings(run: Path, overrides: list[str]) -> EvalSettings:
    """The run's eval section (defaults for an HF folder or an older run), with --set applied."""
    if not run.is_dir():
        raise StageError(f"{run}: no such run folder")
    return runs.run_settings(run, "eval", overrides, "scratchlm eval")


def _evaluated(run: Path, args: argparse.Namespace, reuse: bool) -> dict[str, Any]:
    if reuse and (done := read_report(run)) is not None:
        return done
    device = resolve_device(args.device, "eval --device")
    quantize = [f"eval.quantize={args.quantize}"] if args.quantize else []
    settings = _settings(run, args.overrides + quantize)
    if settings.quantize == "int8" and args.device == "auto":
        device = resolve_device("cpu", "eval --device")  # int8 weights run on the CPU
    result = evaluate_path(run, settings, args.task, args.text, str(device))
    write_report(run, result)
    return result


def cmd_eval(args: argparse.Namespace) -> None:
    if args.compare:
        a, b = (Path(r) for r in args.compare)
        # Fresh scores when the command says what to score; otherwise each run's eval.json.
        reuse = not (args.task or args.text or args.overrides or args.quantize)
        ra, rb = _evaluated(a, args, reuse), _evaluated(b, args, reuse)
        resamples = _settings(a, args.overrides).bootstrap
        print(f"A = {a}\nB = {b}\n")
        print(compare_markdown(compare(ra, rb, resamples), ra, rb), end="")
        return
    if not args.run:
        raise SettingsError("scratchlm eval: give a run folder, or --compare RUN_A RUN_B")
    run = Path(args.run)
    result = _evaluated(run, args, reuse=False)
    print(markdown(result), end="")
    print(f"\n{run / 'eval.json'}\n{run / 'eval.md'}")
    for warning in overlap_warnings(result):
        print(f"scratchlm: warning: {warning}", file=sys.stderr)
