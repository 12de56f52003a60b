"""The recipe: one YAML file with a section per stage, and `--set` overrides of any key.

    name: demo
    curate:    {sources: [builtin:shakespeare], min_words: 50}
    tokenizer: {vocab_size: 4096}
    model:     {n_layer: 4, n_head: 4, n_embd: 128}
    pretrain:  {max_steps: 600, lr: 0.002}

and `--set model.n_layer=6` overrides any key. Every value is checked against its field before
any stage starts (settings.py). The building blocks own their settings (model/config.py,
tokenizer/settings.py, data/settings.py); the stages above them (pretraining, fine-tuning,
generation, evaluation) are declared here, and `Recipe` puts every section together. Everything
is re-exported from here, so `from scratchlm.config import ModelConfig` keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scratchlm.data.settings import CORPUS_STEPS, DOCUMENT_STEPS, CurateSettings
from scratchlm.errors import SettingsError
from scratchlm.model.config import MODEL_PRESETS, ModelConfig
from scratchlm.settings import apply_overrides, build, describe_section, parse_override, setting
from scratchlm.tokenizer.settings import SPECIAL_TOKENS, TokenizerSettings, TokenizeSettings

__all__ = [  # the building blocks' settings, re-exported for recipes and users' imports
    "CORPUS_STEPS", "DOCUMENT_STEPS", "MODEL_PRESETS", "SPECIAL_TOKENS", "CurateSettings",
    "ModelConfig", "SettingsError", "TokenizeSettings", "TokenizerSettings", "apply_overrides",
    "build", "describe_section", "parse_override",
]  # fmt: skip


@dataclass
class PretrainSettings:
    name: str = setting("demo", "run name: the run folder is <work>/runs/<name>")
    max_steps: int = setting(1000, "optimizer steps", min=1)
    batch_size: int = setting(16, "sequences per micro-batch (per process)", min=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", min=1)
    tokens_per_step: int = setting(
        0, "if set: grad_accum = this / (batch_size x block_size x processes)", min=0
    )
    optimizer: Literal["adamw", "muon"] = setting(
        "adamw", "muon: Muon for hidden matrices, AdamW for the rest"
    )
    lr: float = setting(1e-3, "peak AdamW learning rate", min=0.0)
    muon_lr: float = setting(0.02, "peak Muon learning rate (optimizer=muon)", min=0.0)
    muon_momentum: float = setting(0.95, "Muon momentum", min=0.0, max=1.0)
    schedule: Literal["cosine", "wsd"] = setting(
        "cosine", "warmup then cosine decay, or warmup-stable-decay"
    )
    decay_fraction: float = setting(0.2, "wsd: share of steps spent decaying", min=0.0, max=1.0)
    min_lr_ratio: float = setting(
        0.1, "final learning rate as a fraction of the peak", min=0.0, max=1.0
    )
    warmup_steps: int = setting(100, "linear warmup steps", min=0)
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", min=0.0)
    beta1: float = setting(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = setting(0.95, "AdamW beta2", min=0.0, max=1.0)
    grad_clip: float = setting(1.0, "clip gradient norm to this (0 = off)", min=0.0)
    on_nonfinite: Literal["stop", "skip"] = setting(
        "stop", "a NaN/inf loss or gradient: stop, or skip the batch"
    )
    eval_every: int = setting(100, "steps between validation evaluations", min=1)
    eval_batches: int = setting(20, "batches per validation evaluation", min=1)
    sample_every: int = setting(0, "steps between text samples in the log (0 = off)", min=0)
    checkpoint_every: int = setting(0, "steps between checkpoints (0 = only at the end)", min=0)
    keep_last: int = setting(
        2, "checkpoints kept (the best by validation loss is also kept)", min=1
    )
    resume: Literal["never", "auto"] = setting(
        "never", "auto: continue from the run's newest intact checkpoint"
    )
    trust_pickled_checkpoints: bool = setting(
        False,
        "resume a sharded checkpoint that has no metadata.json (made elsewhere, or by an older "
        "scratchlm) through DCP's pickle: this runs any code the folder holds, so only for "
        "checkpoints you made",
    )
    seed: int = setting(1337, "seed for initialisation, data order and dropout")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to train")
    threads: int = setting(0, "torch CPU threads (0 = all cores)", min=0)
    compile: bool = setting(False, "torch.compile the model")
    activation_checkpointing: bool = setting(
        False, "recompute block activations in backward (less memory)"
    )
    peak_flops: float = setting(
        0.0, "hardware FLOP/s for MFU (0 = measured on CPU, table on GPU)", min=0.0
    )
    loggers: list[str] = setting([], "also log to: tensorboard, wandb")
    time_limit: float = setting(
        0.0, "stop (and checkpoint) after this many minutes of training (0 = none)", min=0.0
    )


@dataclass
class ParallelSettings:
    """How `scratchlm pretrain` spreads over the processes torchrun starts (ignored without it)."""

    strategy: Literal["ddp", "fsdp", "tp", "fsdp+tp"] = setting(
        "ddp",
        "ddp: replicas + gradient all-reduce; fsdp: sharded parameters (FSDP2); "
        "tp: tensor parallel; fsdp+tp: both on a 2-D mesh",
    )
    tp_size: int = setting(
        2, "fsdp+tp: processes per tensor-parallel group (tp always uses all of them)", min=0
    )
    cpu_offload: bool = setting(
        False, "fsdp on GPUs: keep sharded parameters and optimizer state in CPU memory"
    )
    mixed_precision: bool = setting(
        True, "fsdp on CUDA: bf16 parameters in compute, fp32 gradient reduction"
    )
    backend: Literal["auto", "nccl", "gloo"] = setting("auto", "auto: nccl on CUDA, gloo on CPU")
    timeout: float = setting(
        600.0, "seconds a collective waits for the other ranks before the job stops", min=1.0
    )


@dataclass
class FinetuneSettings:
    task: Literal["sft", "classify", "dpo", "grpo"] = setting(
        "sft",
        "instruction tuning, a classification head, preference tuning, or RL with a verifier",
    )
    data: str = setting(
        "", "training data: .jsonl, .json, .csv or a builtin: set ('' = no fine-tuning stage)"
    )
    val_data: str = setting("", "validation file ('' = hold out val_fraction of data)")
    test_data: str = setting("", "classify: test file ('' = hold out test_fraction of data)")
    val_fraction: float = setting(0.1, "share of data held out for validation", min=0.0, max=0.5)
    test_fraction: float = setting(0.1, "classify: share held out for testing", min=0.0, max=0.5)
    name: str = setting("", "run name: <work>/runs/<name> ('' = <pretrain run>-<task>)")
    text_field: str = setting("text", "classify: the field (or CSV column) with the text")
    label_field: str = setting("label", "classify: the field (or CSV column) with the label")
    max_steps: int = setting(0, "optimizer steps (0 = `epochs` passes over the data)", min=0)
    epochs: float = setting(1.0, "passes over the training data when max_steps is 0", min=0.0)
    batch_size: int = setting(8, "sequences (or pairs) per step", min=1)
    lr: float = setting(1e-4, "peak AdamW learning rate (LoRA likes ~10x more)", min=0.0)
    warmup_steps: int = setting(
        10, "linear warmup steps (at most a tenth of the run), then cosine decay to 10%", min=0
    )
    weight_decay: float = setting(0.0, "AdamW weight decay on matrices", min=0.0)
    grad_clip: float = setting(1.0, "clip gradient norm to this (0 = off)", min=0.0)
    lora_rank: int = setting(0, "LoRA rank (0 = full fine-tuning)", min=0)
    lora_alpha: float = setting(16.0, "LoRA scale numerator: updates are alpha/rank B A", min=0.0)
    lora_targets: list[str] = setting(
        ["attn.qkv", "attn.proj"], "LoRA: linear layers whose names end with these"
    )
    merge: bool = setting(False, "LoRA: save merged full weights instead of adapters")
    packing: bool = setting(True, "sft: pack several examples per row (else pad each one)")
    train_layers: Literal["head", "last_blocks", "all"] = setting(
        "all", "classify without LoRA: the head only, the head + last_blocks, or everything"
    )
    last_blocks: int = setting(1, "classify: blocks trained with train_layers=last_blocks", min=1)
    class_weights: Literal["none", "balanced"] = setting(
        "none", "classify: weight the loss by inverse class frequency"
    )
    beta: float = setting(0.1, "dpo: strength of the pull towards the reference model", min=0.0)
    group_size: int = setting(8, "grpo: completions sampled per prompt (batch_size prompts)", min=2)
    rl_loss: Literal["clipped", "reinforce"] = setting(
        "clipped", "grpo: PPO's clipped ratio objective, or REINFORCE with advantages (nanochat)"
    )
    advantage: Literal["std", "mean"] = setting(
        "std", "grpo: rewards minus their group's mean, divided by its std (or not: mean)"
    )
    clip: float = setting(0.2, "grpo: clipped: the probability ratio's trust region", min=0.0)
    kl_coef: float = setting(0.0, "grpo: weight of the KL to the starting model", min=0.0)
    updates_per_batch: int = setting(1, "grpo: optimizer steps on each batch of samples", min=1)
    rl_temperature: float = setting(1.0, "grpo: sampling temperature of the completions", min=0.0)
    answer_pattern: str = setting(
        r"(-?\d+(?:\.\d+)?)", "grpo: regex whose last match in a reply is its answer"
    )
    tools: bool = setting(True, "grpo: replies may call the calculator (<|tool|>...<|/tool|>)")
    system: str = setting("", "grpo: a system message before every prompt ('' = none)")
    eval_prompts: int = setting(
        200, "grpo: held-out prompts scored (pass@1, greedy) at each evaluation", min=1
    )
    eval_every: int = setting(50, "steps between validation evaluations", min=1)
    sample_prompts: list[str] = setting(
        [], "sft/dpo: prompts answered at each evaluation ('' = the first 2 validation ones)"
    )
    max_new_tokens: int = setting(60, "sft/dpo: longest sample answer; grpo: longest reply", min=1)
    seed: int = setting(1337, "seed for the split, data order, head initialisation")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to train")
    threads: int = setting(0, "torch CPU threads (0 = all cores)", min=0)


@dataclass
class RLSettings(FinetuneSettings):
    """The pipeline's reinforcement-learning stage: GRPO on the fine-tuned run (or on the
    pretrained one when there is no fine-tuning stage). Every finetune.* setting applies."""

    task: Literal["grpo"] = setting("grpo", "the rl stage runs grpo ('' data = no rl stage)")


@dataclass
class GenerateSettings:
    prompts: list[str] = setting(["\n"], "prompts sampled after pretraining")
    max_new_tokens: int = setting(100, "tokens to sample per prompt", min=1)
    temperature: float = setting(0.8, "sampling temperature (0, or below 1e-5: greedy)", min=0.0)
    top_k: int = setting(50, "sample from the k most likely tokens (0 = all)", min=0)
    top_p: float = setting(
        1.0,
        "sample from the most likely tokens holding this much probability (1 = all)",
        min=0.0,
        max=1.0,
    )
    min_p: float = setting(
        0.0, "drop tokens less likely than min_p x the most likely one (0 = none)", min=0.0, max=1.0
    )
    repetition_penalty: float = setting(
        1.0, "> 1 makes tokens already in the text less likely (1 = none)", min=0.01, max=100.0
    )
    stop: list[str] = setting([], "stop strings: the text ends just before the first one")
    seed: int = setting(1337, "sampling seed")
    quantize: Literal["none", "int8"] = setting(
        "none", "int8: linear layers as int8 weights on the CPU (faster decoding)"
    )
    tools: bool = setting(
        True, "run the calculator when the model writes <|tool|>EXPR<|/tool|> (if it has them)"
    )


@dataclass
class EvalSettings:
    tasks: list[str] = setting(
        ["cloze", "shuffle"],
        "built-in sanity tasks (cloze, shuffle) or multiple-choice files (.jsonl/.csv; FORMAT:PATH forces "
        "hellaswag, arc, piqa, mmlu or mc)",
    )
    heldout: str = setting(
        "",
        "held-out text for perplexity and the built-in tasks: a tokens folder, .bin shard or text/JSONL file "
        "('' = <work>/tokens beside the run)",
    )
    stride: int = setting(0, "sliding-window stride in tokens (0 = half the context)", min=0)
    max_tokens: int = setting(
        100_000, "perplexity: score at most this many tokens (0 = all)", min=0
    )
    max_items: int = setting(
        500, "items per task: a seeded sample of a file's (0 = all; built-in tasks: 1000)", min=0
    )
    few_shot: int = setting(0, "solved examples from the same task before each item", min=0)
    seed: int = setting(1234, "seed of the built-in items, item sampling and few-shot picks")
    batch_size: int = setting(16, "sequences per forward pass", min=1)
    bootstrap: int = setting(10_000, "bootstrap resamples for --compare", min=100)
    every_steps: int = setting(
        0, "pretraining: score the tasks every N steps into metrics.jsonl (0 = off)", min=0
    )
    train_data: str = setting(
        "",
        "training text whose overlap with the tasks' items is checked ('' = the train split of "
        "<work>/tokens beside the run, else <work>/curated; none = no check; or a tokens folder, "
        "curated folder or source files)",
    )
    overlap_ngram: int = setting(
        13, "words an item must share with the training text in a row to count as seen", min=3
    )
    runs: list[str] = setting(
        ["pretrain"], "the pipeline's runs evaluated, one after another: pretrain, finetune, rl"
    )
    quantize: Literal["none", "int8"] = setting(
        "none", "int8: evaluate with int8 linear layers on the CPU (as generate.quantize)"
    )

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in ("pretrain", "finetune", "rl")]
        if unknown or not self.runs:
            raise SettingsError(
                f"invalid setting eval.runs={self.runs}: choose from pretrain, finetune, rl"
            )


@dataclass
class Recipe:
    name: str = setting("demo", "recipe name; the default work folder is work/<name>")
    curate: CurateSettings = field(default_factory=CurateSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    tokenize: TokenizeSettings = field(default_factory=TokenizeSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    rl: RLSettings = field(default_factory=RLSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading

RECIPES_DIR = Path(__file__).parent / "recipes"


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SettingsError(f"{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{path}: cannot read recipe: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def resolve_recipe_path(recipe: str | None) -> Path:
    """A recipe is a YAML path, or the name of a built-in recipe (default: demo)."""
    recipe = recipe or "demo"
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return builtin
    raise SettingsError(
        f"recipe {recipe!r} is neither a file nor a built-in recipe ({', '.join(builtin_recipes())})"
    )


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (path or built-in name), apply `--set` overrides and validate it all."""
    data = _read_yaml(resolve_recipe_path(recipe))
    data = _command_line_preset(data, overrides or [])
    data = apply_overrides(data, overrides or [])
    return build(Recipe, data)


def _command_line_preset(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set model.preset=NAME` asks for that shape: the preset's keys replace the recipe's
    (inside a recipe the keys written beside a preset win; keys also given with --set still
    win, as they are applied after)."""
    for item in overrides:
        key, value = parse_override(item)
        model = data.get("model")
        if key == "model.preset" and value in MODEL_PRESETS and isinstance(model, dict):
            data["model"] = {k: v for k, v in model.items() if k not in MODEL_PRESETS[value]}
    return data


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return build(Recipe, data)
