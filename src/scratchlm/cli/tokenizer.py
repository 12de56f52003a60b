"""`scratchlm tokenizer {train,encode,export,import}`: the tokenizer stage, and tokenizer files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchlm.cli.common import (
    FORMATTER,
    add_recipe_args,
    default_recipe,
    recipe_of,
    settings_help,
)
from scratchlm.cli.stages import DESCRIPTIONS, cmd_stage
from scratchlm.data.sources import iter_documents
from scratchlm.errors import SettingsError, StageError
from scratchlm.pipeline import SECTIONS
from scratchlm.tokenizer.formats import export_tokenizer, import_tokenizer
from scratchlm.tokenizer.tokenizer import BPETokenizer, load_tokenizer
from scratchlm.tokenizer.train import train_tokenizer_stage


def add_parsers(sub: Any) -> None:
    tok = sub.add_parser("tokenizer", help="Tokenizer commands: train, encode, export, import")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tok.set_defaults(handler=lambda args: tok.print_help())  # `scratchlm tokenizer`: the actions
    desc = DESCRIPTIONS["tokenizer"]
    p = tok_sub.add_parser(
        "train",
        help=desc,
        description=desc + ". With --input, train on those files instead and write --out.",
        epilog=settings_help(SECTIONS["tokenizer"], default_recipe()),
        formatter_class=FORMATTER,
    )
    add_recipe_args(p)
    p.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="train on these files / folders / globs instead of <work>/curated",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="with --input: the folder where tokenizer.json goes",
    )
    p.set_defaults(handler=cmd_train, stage="tokenizer")

    desc = "Show how a tokenizer splits a text into tokens"
    p = tok_sub.add_parser("encode", help=desc, description=desc)
    p.add_argument(
        "tokenizer", help="a tokenizer.json, or a folder holding one (e.g. a run folder)"
    )
    p.add_argument("text", help="the text to encode")
    p.set_defaults(handler=cmd_encode)

    desc = "Write a tokenizer in HF (tokenizer.json, vocab.json + merges.txt) and tiktoken formats"
    p = tok_sub.add_parser("export", help=desc, description=desc)
    p.add_argument("tokenizer", help="our tokenizer.json, or a folder holding one")
    p.add_argument("out", help="output folder")
    p.set_defaults(handler=cmd_export)

    desc = "Convert an HF tokenizer.json, GPT-2 vocab.json + merges.txt, or .tiktoken file to ours"
    p = tok_sub.add_parser("import", help=desc, description=desc)
    p.add_argument(
        "src",
        help="HF tokenizer.json, a folder with it or with vocab.json + merges.txt, or a .tiktoken file",
    )
    p.add_argument("out", help="where to write our tokenizer.json")
    p.add_argument(
        "--pattern", help="split pattern (gpt2, gpt4 or a regex) when the source has none"
    )
    p.set_defaults(handler=cmd_import)


def _tokenizer_path(path: str) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def cmd_train(args: argparse.Namespace) -> None:
    """The pipeline's tokenizer stage; or, with --input and --out, a tokenizer of any files."""
    if not (args.input or args.out):
        cmd_stage(args)
        return
    recipe = recipe_of(args)  # validates everything before any work
    if not (args.input and args.out):
        # Writing into <work>/tokenizer would leave the pipeline's shards out of step.
        raise SettingsError(
            "tokenizer train: --input and --out go together (--out: a folder of your choice)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = (doc.text for doc in iter_documents(args.input, recipe.curate.text_field))
    summary = train_tokenizer_stage(texts, recipe.tokenizer, out, progress=not args.quiet)
    print(f"{out / 'tokenizer.json'}: vocab {summary.vocab_size:,} in {summary.seconds} s")


def cmd_encode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(_tokenizer_path(args.tokenizer))
    ids = tok.encode(args.text, allow_special=True)
    pieces = [tok.decode([i]) for i in ids]
    print(f"{len(ids)} tokens for {len(args.text.encode())} bytes")
    print(" ".join(map(str, ids)))
    print("|".join(pieces))


def cmd_export(args: argparse.Namespace) -> None:
    tok = load_tokenizer(_tokenizer_path(args.tokenizer))
    if not isinstance(tok, BPETokenizer):
        raise StageError("a character-level tokenizer has no byte-level BPE format to export to")
    for f in export_tokenizer(tok, args.out):
        print(f)


def cmd_import(args: argparse.Namespace) -> None:
    tok = import_tokenizer(args.src, args.pattern)
    out = _tokenizer_path(args.out) if Path(args.out).is_dir() else Path(args.out)
    tok.save(out)
    print(f"{out}: {tok.vocab_size:,} tokens, {len(tok.special_tokens)} special")
