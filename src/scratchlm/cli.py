"""The `scratchlm` command: one subcommand per stage, plus `run` for the whole chain.

Thin on purpose: parse arguments, load and validate the recipe, call the stage, print.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from scratchlm import __version__
from scratchlm.config import (
    Recipe,
    builtin_recipes,
    describe_section,
    load_recipe,
    recipe_from_dict,
)
from scratchlm.errors import ScratchlmError, SettingsError, StageError

STAGE_COMMANDS = {  # command -> (pipeline stage, one-line description)
    "curate": (
        "curate",
        "Read sources, normalise, drop short and duplicate documents -> <work>/curated",
    ),
    "tokenizer train": (
        "tokenizer",
        "Train a byte-level BPE tokenizer on the curated text -> <work>/tokenizer",
    ),
    "tokenize": (
        "tokenize",
        "Encode the curated text into train/val token shards -> <work>/tokens",
    ),
    "pretrain": ("pretrain", "Pretrain the model on the token shards -> <work>/runs/<name>"),
}


def _settings_help(sections: tuple[str, ...]) -> str:
    lines = ["settings (override with --set KEY=VALUE):"]
    for sec in sections:
        lines += describe_section(Recipe.__dataclass_fields__[sec].default_factory, f"{sec}.")  # type: ignore[arg-type]
    return "\n".join(lines)


def _add_set(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"override a setting, e.g. {example} (repeatable)",
    )


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        nargs="?",
        help=f"recipe YAML file or built-in name ({', '.join(builtin_recipes())}); default: demo",
    )
    p.add_argument("--work", metavar="DIR", help="work folder (default: work/<recipe name>)")
    _add_set(p, "model.n_layer=6")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="pretraining continues from the run's latest checkpoint (pretrain.resume=auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    from scratchlm.pipeline import SECTIONS, STAGES

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Build a language model from scratch: curate, tokenize, pretrain, generate.",
    )
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="Run every stage in order, skipping those already done",
        description="Run every stage in order into one work folder, skipping stages whose inputs and settings are unchanged.",
        epilog=_settings_help(tuple(s for st in STAGES for s in SECTIONS[st])),
        formatter_class=fmt,
    )
    _add_recipe_args(p)
    p.add_argument(
        "--force",
        metavar="STAGE",
        action="append",
        default=[],
        choices=STAGES,
        help=f"re-run this stage even if it is done ({', '.join(STAGES)}; repeatable)",
    )

    for name in ("curate", "tokenize", "pretrain"):
        stage, desc = STAGE_COMMANDS[name]
        p = sub.add_parser(
            name,
            help=desc,
            description=desc,
            epilog=_settings_help(SECTIONS[stage]),
            formatter_class=fmt,
        )
        _add_recipe_args(p)

    tok = sub.add_parser("tokenizer", help="Tokenizer commands: train, encode, export, import")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    stage, desc = STAGE_COMMANDS["tokenizer train"]
    p = tok_sub.add_parser(
        "train",
        help=desc,
        description=desc + ". With --input, train on those files instead and write --out.",
        epilog=_settings_help(SECTIONS[stage]),
        formatter_class=fmt,
    )
    _add_recipe_args(p)
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
    desc = "Show how a tokenizer splits a text into tokens"
    p = tok_sub.add_parser("encode", help=desc, description=desc)
    p.add_argument(
        "tokenizer", help="a tokenizer.json, or a folder holding one (e.g. a run folder)"
    )
    p.add_argument("text", help="the text to encode")
    desc = "Write a tokenizer in HF (tokenizer.json, vocab.json + merges.txt) and tiktoken formats"
    p = tok_sub.add_parser("export", help=desc, description=desc)
    p.add_argument("tokenizer", help="our tokenizer.json, or a folder holding one")
    p.add_argument("out", help="output folder")
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

    desc = "Export a run for other tools: `export hf RUN OUT` writes an HF transformers folder"
    p = sub.add_parser("export", help=desc, description=desc)
    p.add_argument(
        "format", choices=["hf"], help="hf: GPT2LMHeadModel or LlamaForCausalLM, with tokenizer"
    )
    p.add_argument("run", help="a run folder, e.g. work/demo/runs/demo")
    p.add_argument("out", help="output folder")
    desc = "Import a model: `import hf DIR OUT` turns a local HF GPT-2 / Llama folder into a run folder"
    p = sub.add_parser("import", help=desc, description=desc)
    p.add_argument(
        "format", choices=["hf"], help="hf: a folder saved by save_pretrained (GPT-2 or Llama)"
    )
    p.add_argument(
        "src", help="the HF model folder (config.json, model.safetensors, tokenizer files)"
    )
    p.add_argument("out", help="the run folder to create")

    desc = "Compute-optimal model size and token count for a budget (Chinchilla: 20 tokens per parameter)"
    p = sub.add_parser("plan", help=desc, description=desc)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="training compute in FLOPs, e.g. 1e19")
    budget.add_argument("--hours", type=float, help="wall-clock hours on --gpus GPUs")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--gpu", default="H100", help="H100, H200, A100, ... (for the peak FLOP/s)")
    p.add_argument(
        "--mfu", type=float, default=0.4, help="expected model FLOP utilisation (default 0.4)"
    )

    desc = "Sample text from a run folder or an HF model folder"
    p = sub.add_parser(
        "generate",
        help=desc,
        description=desc,
        epilog=_settings_help(("generate",)),
        formatter_class=fmt,
    )
    p.add_argument("run", help="a run folder (e.g. work/demo/runs/demo) or an HF model folder")
    p.add_argument(
        "--prompt",
        action="append",
        help="prompt text (repeatable; default: the run's generate.prompts)",
    )
    p.add_argument(
        "--input",
        metavar="FILE",
        help='one prompt a line (or a JSON object with "prompt"); writes JSONL, one line a prompt',
    )
    p.add_argument(
        "--output", metavar="FILE", help="with --input: write the JSONL here, not stdout"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="with --input: prompts generated together"
    )
    _add_set(p, "generate.temperature=0.5")

    desc = "Chat with a model in the terminal (/system TEXT, /reset, /exit)"
    p = sub.add_parser(
        "chat",
        help=desc,
        description=desc,
        epilog=_settings_help(("generate",)),
        formatter_class=fmt,
    )
    p.add_argument("run", help="a run folder or an HF model folder")
    p.add_argument("--system", metavar="TEXT", help="a system message to start with")
    _add_set(p, "generate.temperature=0.5")

    desc = "Serve a model: OpenAI-compatible API (/v1/completions, /v1/chat/completions) and a chat page"
    p = sub.add_parser("serve", help=desc, description=desc)
    p.add_argument("run", help="a run folder or an HF model folder")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", help="require this Bearer token (default: $SCRATCHLM_API_KEY if set)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for"
    )
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together")
    p.add_argument("--model-name", help="the model id clients use (default: the folder's name)")
    return parser


# --------------------------------------------------------------------------- commands


def _describe(result: Any) -> str:
    s = result.summary
    if result.stage == "curate":
        return f"{s['documents_in']:,} documents in, {s['documents_out']:,} kept"
    if result.stage == "tokenizer":
        return f"{s.get('kind', 'bpe')} vocab {s['vocab_size']:,} ({s['merges']:,} merges)"
    if result.stage == "tokenize":
        return f"{s['tokens']['train']:,} train / {s['tokens']['val']:,} val tokens"
    if result.stage == "pretrain":
        return f"{s['parameters']:,} params, val loss {s['initial_val_loss']:.3f} -> {s['final_val_loss']:.3f}, {s['tokens_per_second']:,} tok/s"
    return f"{len(s.get('samples', []))} samples"


def _print_result(result: Any) -> None:
    status = "ran" if result.ran else "skipped"
    print(
        f"  {result.stage:<10} {status:<8} {result.seconds:7.1f} s  {result.out}  {_describe(result)}",
        flush=True,
    )


def _print_samples(samples: list[dict[str, str]]) -> None:
    for s in samples:
        print(f"\n--- prompt: {s['prompt']!r}")
        print("untrained model:")
        print("  " + s["untrained"].strip().replace("\n", "\n  "))
        print("trained model:")
        print("  " + s["trained"].strip().replace("\n", "\n  "))


def _shell_quote(text: str) -> str:
    """Quote for bash; a prompt with newlines uses $'...' so the command stays on one line."""
    if "\n" not in text:
        return shlex.quote(text)
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def cmd_run(args: argparse.Namespace, recipe: Recipe) -> None:
    from scratchlm.pipeline import Workspace, run_pipeline

    ws = Workspace.for_recipe(recipe, args.work)
    print(f"scratchlm run {recipe.name}: work folder {ws.root}", flush=True)
    results = run_pipeline(
        recipe, ws, tuple(args.force), progress=not args.quiet, on_result=_print_result
    )
    _print_samples(results[-1].summary.get("samples", []))
    run_dir = ws.out("pretrain")
    ran = sum(r.ran for r in results)
    prompt = _shell_quote(recipe.generate.prompts[0] if recipe.generate.prompts else "Hello")
    rec = f" {args.recipe}" if args.recipe else ""
    work = f" --work {args.work}" if args.work else ""
    kept = [
        o for o in args.overrides if not o.startswith(("pretrain.max_steps=", "pretrain.resume="))
    ]
    work += "".join(f" --set {shlex.quote(o)}" for o in kept)
    print(
        f"\nDone: {ran} stage(s) ran, {len(results) - ran} skipped, {sum(r.seconds for r in results):.1f} s.\n"
        f"  curated documents  {ws.out('curate')}  (report.json says what was dropped and why)\n"
        f"  tokenizer          {ws.out('tokenizer')}/tokenizer.json\n"
        f"  token shards       {ws.out('tokenize')}\n"
        f"  model run          {run_dir}  (config.yaml, metrics.jsonl, checkpoints/)\n"
        f"\nNext:\n"
        f"  scratchlm generate {run_dir} --prompt {prompt}\n"
        f"  scratchlm run{rec}{work} --set pretrain.max_steps={recipe.pretrain.max_steps * 2} --resume   # train longer, from the last checkpoint\n"
        f"  scratchlm run --help                                # every setting"
    )


def cmd_stage(stage: str, args: argparse.Namespace, recipe: Recipe) -> None:
    from scratchlm.pipeline import Workspace, run_stage

    ws = Workspace.for_recipe(recipe, args.work)
    result = run_stage(stage, recipe, ws, force=True, progress=not args.quiet)
    _print_result(result)


def _generate_settings(folder: Path, overrides: list[str]) -> Any:
    """The run's generate settings (HF folders: the defaults), with --set overrides."""
    import yaml

    from scratchlm.config import apply_overrides

    config = folder / "config.yaml"
    if not config.is_file() and not (folder / "config.json").is_file():
        raise StageError(
            f"{folder} is not a run folder (no config.yaml; runs are in <work>/runs/<name>) "
            "nor an HF model folder (no config.json)"
        )
    data = yaml.safe_load(config.read_text()) if config.is_file() else {}
    return recipe_from_dict(apply_overrides(data, overrides)).generate


def _load_for_generation(folder: Path) -> tuple[Any, Any]:
    from scratchlm.infer.generate import load_model
    from scratchlm.infer.layout import prepare_for_generation

    model, tok = load_model(folder)
    return prepare_for_generation(model), tok


def cmd_generate(args: argparse.Namespace) -> None:
    from scratchlm.infer.generate import stream_text

    settings = _generate_settings(Path(args.run), args.overrides)
    if args.input:
        from scratchlm.infer.batch import generate_file, read_prompts

        prompts = read_prompts(Path(args.input))
        model, tok = _load_for_generation(Path(args.run))
        generate_file(model, tok, prompts, settings, args.output, args.batch_size)
        return
    prompts = args.prompt or settings.prompts
    model, tok = _load_for_generation(Path(args.run))
    for prompt in prompts:
        print(prompt, end="", flush=True)
        for piece in stream_text(model, tok, prompt, settings):
            print(piece, end="", flush=True)
        print()
        if len(prompts) > 1:
            print("---")


def cmd_chat(args: argparse.Namespace) -> None:
    from scratchlm.infer.chat import Chat, run_chat, template_for

    settings = _generate_settings(Path(args.run), args.overrides)
    model, tok = _load_for_generation(Path(args.run))
    template = template_for(args.run, tok)
    if template is None:
        raise StageError(
            f"{args.run} has no chat template and its tokenizer has no chat tokens: "
            "fine-tune it for chat, or use `scratchlm generate`"
        )
    run_chat(Chat(model, tok, template, settings), system=args.system)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from scratchlm.infer.server import API_KEY_ENV, ServeOptions, serve

    folder = Path(args.run)
    _generate_settings(folder, [])  # the same clear error for a folder that holds no model
    if args.max_tokens < 1 or args.max_batch < 1:
        raise SettingsError("serve: --max-tokens and --max-batch must be at least 1")
    name = args.model_name or folder.resolve().name
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    serve(
        str(folder), args.host, args.port, ServeOptions(name, key, args.max_tokens, args.max_batch)
    )


def _tokenizer_path(path: str) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from scratchlm.tokenizer.formats import export_tokenizer, import_tokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer

    if args.tokenizer_command == "encode":
        tok = load_tokenizer(_tokenizer_path(args.tokenizer))
        ids = tok.encode(args.text, allow_special=True)
        pieces = [tok.decode([i]) for i in ids]
        print(f"{len(ids)} tokens for {len(args.text.encode())} bytes")
        print(" ".join(map(str, ids)))
        print("|".join(pieces))
    elif args.tokenizer_command == "export":
        tok = load_tokenizer(_tokenizer_path(args.tokenizer))
        if not isinstance(tok, Tokenizer):
            raise StageError(
                "a character-level tokenizer has no byte-level BPE format to export to"
            )
        for f in export_tokenizer(tok, args.out):
            print(f)
    elif args.tokenizer_command == "import":
        tok = import_tokenizer(args.src, args.pattern)
        out = _tokenizer_path(args.out) if Path(args.out).is_dir() else Path(args.out)
        tok.save(out)
        print(f"{out}: {tok.vocab_size:,} tokens, {len(tok.special_tokens)} special")


def cmd_train_tokenizer_on_files(args: argparse.Namespace, recipe: Recipe) -> None:
    from scratchlm.data.sources import iter_documents
    from scratchlm.tokenizer.train import train_tokenizer_stage

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = (doc.text for doc in iter_documents(args.input, recipe.curate.text_field))
    summary = train_tokenizer_stage(texts, recipe.tokenizer, out, progress=not args.quiet)
    print(f"{out / 'tokenizer.json'}: vocab {summary['vocab_size']:,} in {summary['seconds']} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("generate", "chat", "serve"):
            {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve}[args.command](args)
            return 0
        if args.command == "plan":
            from scratchlm.train.plan import describe, plan

            try:
                print(describe(plan(args.flops, args.hours, args.gpus, args.gpu, args.mfu)))
            except ValueError as e:
                raise StageError(str(e)) from None
            return 0
        if args.command == "export":
            from scratchlm.export.hf import export_run

            for path in export_run(args.run, args.out):
                print(path)
            return 0
        if args.command == "import":
            from scratchlm.export.hf import import_run

            run = import_run(args.src, args.out)
            print(f"{run}: imported; try `scratchlm generate {run} --prompt 'Hello'`")
            return 0
        if args.command == "tokenizer" and args.tokenizer_command != "train":
            cmd_tokenizer(args)
            return 0
        overrides = args.overrides + (
            ["pretrain.resume=auto"] if getattr(args, "resume", False) else []
        )
        recipe = load_recipe(args.recipe, overrides)  # validates everything before any work
        if args.command == "run":
            cmd_run(args, recipe)
        elif args.command == "tokenizer" and (args.input or args.out):
            if not (args.input and args.out):
                # Writing into <work>/tokenizer would leave the pipeline's shards out of step.
                raise SettingsError(
                    "tokenizer train: --input and --out go together (--out: a folder of your choice)"
                )
            cmd_train_tokenizer_on_files(args, recipe)
        else:
            name = "tokenizer train" if args.command == "tokenizer" else args.command
            cmd_stage(STAGE_COMMANDS[name][0], args, recipe)
        return 0
    except ScratchlmError as e:
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `scratchlm run | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:
        if str(e):  # training saved a checkpoint and says how to continue
            print(f"scratchlm: interrupted by {e}", file=sys.stderr)
            return 130
        print(
            "scratchlm: interrupted; finished stages are kept, the interrupted one re-runs next time",
            file=sys.stderr,
        )
        return 130
