"""The `scratchlm` command: a table of command groups, each a module that owns its parsers
and the functions they call (as litgpt's __main__.py maps commands to functions).

    stages      run, curate, tokenize, pretrain (+ curate train-quality)
    tokenizer   tokenizer train | encode | export | import
    models      export, import, plan
    evaluate    eval
    use         generate, chat, serve
    finetune    finetune, classify

Thin on purpose: parse arguments, call one function, print. Exit codes: 0 done, 2 a mistake in
the input (a message says which), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from scratchlm import __version__
from scratchlm.cli import evaluate, finetune, models, stages, tokenizer, use
from scratchlm.errors import ScratchlmError, SettingsError
from scratchlm.train.distributed import is_main_process

GROUPS = (stages, tokenizer, models, evaluate, use, finetune)  # in --help order
# Commands below another command's positional argument, read before argparse sees them.
PREFIX_COMMANDS = {("curate", "train-quality"): stages.cmd_train_quality}
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Build a language model from scratch: curate, tokenize, pretrain, generate.",
    )
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `scratchlm` alone: what it can do
        build_parser().print_help()
        return EXIT_OK
    prefixed = PREFIX_COMMANDS.get(tuple(argv[:2]))  # type: ignore[call-overload]
    try:
        if prefixed is not None:
            prefixed(argv[2:])
        else:
            args = build_parser().parse_args(argv)
            args.handler(args)
        return EXIT_OK
    except ScratchlmError as e:
        # Under torchrun every rank finds the same bad setting: rank 0 alone says it.
        if not isinstance(e, SettingsError) or is_main_process():
            print(f"scratchlm: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `scratchlm run | head`: the reader left; not an error
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt as e:
        if str(e):  # training saved a checkpoint and says how to continue
            print(f"scratchlm: interrupted by {e}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(
            "scratchlm: interrupted; finished stages are kept, the interrupted one re-runs next time",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
