"""The `scratchlm` command: one subcommand per stage, plus `run` for the whole chain.

Thin on purpose: parse arguments, load and validate the recipe, call the stage, print.
"""

from __future__ import annotations

import argparse
import os
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
        "Read sources, run the curate.steps (filters, language ID, quality, PII, dedup) -> "
        "<work>/curated. `scratchlm curate train-quality --help`: train the quality classifier",
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

    desc = "Evaluate a run: perplexity, bits per byte and multiple-choice tasks with 95% intervals"
    p = sub.add_parser(
        "eval",
        help=desc,
        description=desc + ". Writes eval.json and eval.md into the run folder.",
        epilog=_settings_help(("eval",)),
        formatter_class=fmt,
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
    _add_set(p, "eval.few_shot=5")

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

    _add_finetune_parsers(sub)
    return parser


def _add_finetune_parsers(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    desc = (
        "Fine-tune a pretrained run (or an HF folder): sft on conversations, classify with a "
        "head, or dpo on preference pairs -> <base>-<task> beside the base run"
    )
    p = sub.add_parser(
        "finetune",
        help="Fine-tune a run: sft, classify or dpo",
        description=desc,
        epilog=_settings_help(("finetune",)),
        formatter_class=fmt,
    )
    p.add_argument("task", choices=["sft", "classify", "dpo"])
    p.add_argument("base", help="a run folder (e.g. work/demo/runs/demo) or an HF model folder")
    p.add_argument(
        "--data", help="training data: .jsonl, .json, .csv or builtin:shakespeare-dialogue, ..."
    )
    p.add_argument("--out", metavar="DIR", help="the run folder to write (default: <base>-<task>)")
    p.add_argument("--lora", type=int, metavar="RANK", help="train LoRA adapters of this rank")
    p.add_argument("--merge", action="store_true", help="LoRA: save merged full weights")
    _add_set(p, "finetune.lr=3e-4")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    desc = "Label texts with a classification run (from `scratchlm finetune classify`)"
    p = sub.add_parser("classify", help=desc, description=desc)
    p.add_argument("run", help="a classification run folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", help="a text to label (repeatable)")
    what.add_argument("--input", metavar="FILE", help="a file with one text per line")


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
    if result.stage == "finetune":
        if s["task"] == "sft":
            return f"sft on {s['examples']['train']:,} conversations, val loss {s['initial_val_loss']:.3f} -> {s['final_val_loss']:.3f}"
        return f"{s['task']}, {s['steps']} steps"
    if result.stage == "eval":
        tasks = ", ".join(f"{n} {100 * t['acc']:.0f}%" for n, t in s["tasks"].items())
        bpb = f"{s['perplexity']['bits_per_byte']:.3f} bits/byte, " if s.get("perplexity") else ""
        return bpb + tasks
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
    from scratchlm.train.distributed import launched

    if launched():  # every rank would curate and tokenize into the same folders at once
        raise SettingsError(
            "scratchlm run under torchrun: run the stages before pretraining once (`scratchlm "
            "run --set pretrain.max_steps=...` or `scratchlm tokenize`), then `torchrun ... -m "
            "scratchlm pretrain`"
        )
    ws = Workspace.for_recipe(recipe, args.work)
    print(f"scratchlm run {recipe.name}: work folder {ws.root}", flush=True)
    results = run_pipeline(
        recipe, ws, tuple(args.force), progress=not args.quiet, on_result=_print_result
    )
    by_stage = {r.stage: r for r in results}
    _print_samples(by_stage["sample"].summary.get("samples", []))
    tuned = by_stage.get("finetune")
    for a in tuned.summary.get("answers", []) if tuned else []:
        print(f"\n--- fine-tuning ({tuned.summary['task']}), asked: {a['prompt']!r}")
        for who, text in (("pretrained", a["before"]), ("fine-tuned", a["after"])):
            print(f"{who} model answers:\n  " + text.strip().replace("\n", "\n  "))
    if "eval" in by_stage:
        print(f"\n--- evaluation ({by_stage['eval'].out / 'eval.md'})\n")
        print((by_stage["eval"].out / "eval.md").read_text(), end="")
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


def cmd_stage(stage: str, args: argparse.Namespace, recipe: Recipe) -> None:
    from scratchlm.pipeline import Workspace, run_stage
    from scratchlm.train.distributed import is_main_process

    ws = Workspace.for_recipe(recipe, args.work)
    result = run_stage(stage, recipe, ws, force=True, progress=not args.quiet)
    if is_main_process():  # under torchrun, one summary line, not one per rank
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
    from scratchlm.infer.layout import prepare_for_generation
    from scratchlm.train.checkpoint import load_model

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


def cmd_finetune(args: argparse.Namespace) -> None:
    from scratchlm.config import apply_overrides
    from scratchlm.finetune.stage import finetune

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
    base = Path(args.base)
    out = Path(args.out) if args.out else base.parent / (s.name or f"{base.name}-{s.task}")
    summary = finetune(s, base, out, progress=not args.quiet)
    _print_finetune(summary, out)


def _print_finetune(summary: dict[str, Any], out: Path) -> None:
    task = summary["task"]
    print(f"{out}: {task}, {summary['steps']} steps")
    for src, info in summary.get("skipped_records", {}).items():
        print(f"  skipped {info['count']} record(s) of {src}, e.g. {info['examples'][0]}")
    cut = summary.get("truncated", {})
    if any(cut.values()):
        print("  cut to fit the context: " + ", ".join(f"{n} {split}" for split, n in cut.items()))
    if summary.get("added_tokens"):
        print(f"  added tokens: {' '.join(summary['added_tokens'])}")
    if task == "sft":
        print(f"  val loss {summary['initial_val_loss']} -> {summary['final_val_loss']}")
    elif task == "dpo":
        i, f = summary["initial"], summary["final"]
        print(
            f"  reward accuracy {i.get('reward_accuracy')} -> {f.get('reward_accuracy')}, margin {i.get('reward_margin')} -> {f.get('reward_margin')}"
        )
    else:
        for split in ("val", "test"):
            r = summary[split]
            if r.get("items"):
                print(
                    f"  {split}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f} on {r['items']} items"
                )
        print(f"  report: {out / 'report.json'}, confusion_val.png, confusion_test.png")
    for a in summary.get("answers", []):
        print(f"\n--- {a['prompt']!r}\n  before: {a['before']!r}\n  after:  {a['after']!r}")


def cmd_classify(args: argparse.Namespace) -> None:
    import json

    from scratchlm.finetune.classify import classify_texts

    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise StageError(f"--input {path}: no such file")
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = args.text
    for result in classify_texts(args.run, texts):
        print(json.dumps(result, ensure_ascii=False))


def _eval_settings(run: Path, overrides: list[str]) -> Any:
    """The run's eval section (defaults for an HF folder or an older run), with --set applied."""
    import yaml

    from scratchlm.config import EvalSettings, apply_overrides, build

    config = run / "config.yaml"
    saved = (yaml.safe_load(config.read_text()) or {}).get("eval") if config.is_file() else None
    data = apply_overrides({"eval": saved or {}}, overrides)
    if other := sorted(set(data) - {"eval"}):
        raise SettingsError(f"scratchlm eval takes eval.* settings only, not {other[0]}.*")
    return build(EvalSettings, data["eval"], "eval.")


def _evaluated(run: Path, args: argparse.Namespace, reuse: bool) -> dict[str, Any]:
    from scratchlm.eval.evaluate import evaluate_path
    from scratchlm.eval.report import read_report, write_report
    from scratchlm.train.loop import resolve_device

    if reuse and (done := read_report(run)) is not None:
        return done
    result = evaluate_path(
        run,
        _eval_settings(run, args.overrides),
        args.task,
        args.text,
        str(resolve_device(args.device)),
    )
    write_report(run, result)
    return result


def cmd_eval(args: argparse.Namespace) -> None:
    from scratchlm.eval.report import compare, compare_markdown, markdown

    if args.compare:
        a, b = (Path(r) for r in args.compare)
        # Fresh scores when the command says what to score; otherwise each run's eval.json.
        reuse = not (args.task or args.text or args.overrides)
        ra, rb = _evaluated(a, args, reuse), _evaluated(b, args, reuse)
        resamples = _eval_settings(a, args.overrides).bootstrap
        print(f"A = {a}\nB = {b}\n")
        print(compare_markdown(compare(ra, rb, resamples), ra, rb), end="")
        return
    if not args.run:
        raise SettingsError("scratchlm eval: give a run folder, or --compare RUN_A RUN_B")
    run = Path(args.run)
    result = _evaluated(run, args, reuse=False)
    print(markdown(result), end="")
    print(f"\n{run / 'eval.json'}\n{run / 'eval.md'}")


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
    from scratchlm.data.fasttext_models import train_quality
    from scratchlm.data.sources import iter_documents

    args = quality_parser().parse_args(argv)
    if not 0 < args.held_out < 1:
        raise SettingsError(f"--held-out {args.held_out}: expected a share between 0 and 1")
    texts = lambda srcs: [d.text for d in iter_documents(srcs, args.text_field)]  # noqa: E731
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["curate", "train-quality"]:  # a sub-command beside curate's recipe argument
        try:
            cmd_train_quality(argv[2:])
            return 0
        except ScratchlmError as e:
            print(f"scratchlm: error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("generate", "chat", "serve"):
            {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve}[args.command](args)
            return 0
        if args.command == "finetune":
            cmd_finetune(args)
            return 0
        if args.command == "classify":
            cmd_classify(args)
            return 0
        if args.command == "eval":
            cmd_eval(args)
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
        # torchrun --max-restarts starts the workers again after a failure: they resume.
        restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        overrides = args.overrides + (
            ["pretrain.resume=auto"] if getattr(args, "resume", False) or restarted else []
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
