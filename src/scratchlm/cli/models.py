"""`scratchlm export hf|gguf` and `scratchlm import hf`: runs to and from HF transformers
folders and llama.cpp's GGUF files, and `scratchlm plan`: a compute-optimal model for a budget."""

from __future__ import annotations

import argparse
from typing import Any

from scratchlm.errors import SettingsError, StageError
from scratchlm.export.gguf import TYPES, export_run_gguf
from scratchlm.export.hf import export_run, import_run
from scratchlm.train.plan import describe, plan


def add_parsers(sub: Any) -> None:
    desc = (
        "Export a run for other tools: `export hf RUN OUT` writes an HF transformers folder, "
        "`export gguf RUN OUT.gguf` one file for llama.cpp / Ollama"
    )
    p = sub.add_parser("export", help=desc, description=desc)
    p.add_argument(
        "format",
        choices=["hf", "gguf"],
        help="hf: GPT2LMHeadModel or LlamaForCausalLM, with tokenizer; gguf: llama.cpp's format",
    )
    p.add_argument("run", help="a run folder, e.g. work/demo/runs/demo")
    p.add_argument("out", help="output folder (hf) or file (gguf)")
    p.add_argument(
        "--type",
        choices=list(TYPES),
        default="f32",
        help="gguf: weight type, f32 (exact), f16 or q8_0 (8-bit blocks; default f32)",
    )
    p.set_defaults(handler=cmd_export)

    desc = "Import a model: `import hf DIR OUT` turns a local HF GPT-2 / Llama folder into a run folder"
    p = sub.add_parser("import", help=desc, description=desc)
    p.add_argument(
        "format", choices=["hf"], help="hf: a folder saved by save_pretrained (GPT-2 or Llama)"
    )
    p.add_argument(
        "src", help="the HF model folder (config.json, model.safetensors, tokenizer files)"
    )
    p.add_argument("out", help="the run folder to create")
    p.set_defaults(handler=cmd_import)

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
    p.set_defaults(handler=cmd_plan)


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "gguf":
        path = export_run_gguf(args.run, args.out, args.type)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {args.type})")
        return
    if args.type != "f32":
        raise SettingsError("export hf: --type is for gguf only (HF folders hold float32)")
    for path in export_run(args.run, args.out):
        print(path)


def cmd_import(args: argparse.Namespace) -> None:
    run = import_run(args.src, args.out)
    print(f"{run}: imported; try `scratchlm generate {run} --prompt 'Hello'`")


def cmd_plan(args: argparse.Namespace) -> None:
    try:
        print(describe(plan(args.flops, args.hours, args.gpus, args.gpu, args.mfu)))
    except ValueError as e:
        raise StageError(str(e)) from None
