"""Using a model: `scratchlm generate`, `scratchlm chat` and `scratchlm serve`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from scratchlm import runs
from scratchlm.cli.common import FORMATTER, FROM_RUN, add_set, generate_settings, settings_help
from scratchlm.device import resolve_device, resolve_dtype
from scratchlm.errors import SettingsError, StageError
from scratchlm.infer.batch import generate_file, read_prompts
from scratchlm.infer.chat import Chat, run_chat
from scratchlm.infer.generate import stream_text
from scratchlm.infer.layout import load_for_generation
from scratchlm.infer.server import API_KEY_ENV, ServeOptions, serve


def add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="int8: linear layers as int8 weights on the CPU, ~2-3x faster decoding "
        "(the same as --set generate.quantize=int8)",
    )


def with_quantize(args: argparse.Namespace) -> list[str]:
    """The --set overrides, with --quantize as the generate.quantize setting it stands for."""
    return args.overrides + ([f"generate.quantize={args.quantize}"] if args.quantize else [])


def add_parsers(sub: Any) -> None:
    desc = "Sample text from a run folder or an HF model folder"
    p = sub.add_parser(
        "generate",
        help=desc,
        description=desc,
        epilog=settings_help(("generate",), note=FROM_RUN),
        formatter_class=FORMATTER,
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
    add_quantize(p)
    add_set(p, "generate.temperature=0.5")
    add_device_args(p)
    p.set_defaults(handler=cmd_generate)

    desc = "Chat with a model in the terminal (/system TEXT, /reset, /exit)"
    p = sub.add_parser(
        "chat",
        help=desc,
        description=desc,
        epilog=settings_help(("generate",), note=FROM_RUN),
        formatter_class=FORMATTER,
    )
    p.add_argument("run", help="a run folder or an HF model folder")
    p.add_argument("--system", metavar="TEXT", help="a system message to start with")
    add_quantize(p)
    add_set(p, "generate.temperature=0.5")
    add_device_args(p)
    p.set_defaults(handler=cmd_chat)

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
    p.add_argument("--max-batch", type=int, default=8, help="rows generated together")
    p.add_argument(
        "--token-budget",
        type=int,
        default=512,
        help="tokens one engine step reads (decoding rows + chunks of new prompts)",
    )
    p.add_argument("--model-name", help="the model id clients use (default: the folder's name)")
    add_device_args(p)
    add_quantize(p)
    p.set_defaults(handler=cmd_serve)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, mps or auto (default: cuda if there is one)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16 or auto (default: bfloat16 on CUDA, else float32)",
    )


def _device_for(name: str, quantize: str) -> str:
    """int8 weights run on the CPU: with them, `auto` means the CPU."""
    return "cpu" if quantize == "int8" and name == "auto" else name


def load(args: argparse.Namespace, quantize: str = "none") -> runs.LoadedModel:
    """The model to generate with, on the device and in the dtype the command line names."""
    device = resolve_device(_device_for(args.device, quantize), f"{args.command} --device")
    dtype = resolve_dtype(args.dtype, device, f"{args.command} --dtype")
    return load_for_generation(args.run, device, dtype, quantize)


def cmd_generate(args: argparse.Namespace) -> None:
    settings = generate_settings(args.run, with_quantize(args), "generate")
    if args.input:
        prompts = read_prompts(Path(args.input))
        loaded = load(args, settings.quantize)
        generate_file(
            loaded.model, loaded.tokenizer, prompts, settings, args.output, args.batch_size
        )
        return
    prompts = args.prompt or settings.prompts
    loaded = load(args, settings.quantize)
    for prompt in prompts:
        print(prompt, end="", flush=True)
        for piece in stream_text(loaded.model, loaded.tokenizer, prompt, settings):
            print(piece, end="", flush=True)
        print()
        if len(prompts) > 1:
            print("---")


def cmd_chat(args: argparse.Namespace) -> None:
    settings = generate_settings(args.run, with_quantize(args), "chat")
    loaded = load(args, settings.quantize)
    template = runs.chat_template(args.run, loaded.tokenizer)
    if template is None:
        raise StageError(
            f"{args.run} has no chat template and its tokenizer has no chat tokens: "
            "fine-tune it for chat, or use `scratchlm generate`"
        )
    run_chat(Chat(loaded.model, loaded.tokenizer, template, settings), system=args.system)


def cmd_serve(args: argparse.Namespace) -> None:
    folder = runs.require_model_folder(args.run)  # a clear error for a folder holding no model
    if args.max_tokens < 1 or args.max_batch < 1 or args.token_budget < 1:
        raise SettingsError(
            "serve: --max-tokens, --max-batch and --token-budget must be at least 1"
        )
    name = args.model_name or folder.resolve().name
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    # the run's own generate.quantize unless --quantize says otherwise
    quantize = args.quantize or generate_settings(args.run, [], "serve").quantize
    device = resolve_device(_device_for(args.device, quantize), "serve --device")
    dtype = resolve_dtype(args.dtype, device, "serve --dtype")
    options = ServeOptions(
        name,
        key,
        args.max_tokens,
        args.max_batch,
        token_budget=args.token_budget,
        device=device,
        dtype=dtype,
        quantize=quantize,
    )
    serve(str(folder), args.host, args.port, options)
