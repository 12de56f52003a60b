"""Typed settings for every stage, read from a YAML recipe with dotted command-line overrides.

A recipe is one YAML file with a section per stage:

    name: demo
    curate:    {sources: [builtin:shakespeare], min_words: 50}
    tokenizer: {vocab_size: 4096}
    model:     {n_layer: 4, n_head: 4, n_embd: 128}
    pretrain:  {max_steps: 600, lr: 0.002}

and `--set model.n_layer=6` overrides any key. Every value is checked against its field
here before any stage starts; a wrong key, type or value is a `SettingsError` whose one-line
message names the key, the value given and what is allowed.

This module imports nothing from the stages, so every stage can import its settings from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from scratchlm.errors import SettingsError


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A settings field with a help line and optional inclusive bounds."""
    meta = {"help": help, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- stage settings


@dataclass
class CurateSettings:
    sources: list[str] = setting(
        ["builtin:pydoc"],
        "files, folders or globs (.txt, .md, .jsonl, .jsonl.gz) or builtin:shakespeare / builtin:pydoc",
    )
    text_field: str = setting("text", "the JSONL field that holds a document's text")
    min_words: int = setting(20, "drop documents with fewer words than this", min=0)
    max_docs: int = setting(0, "read at most this many documents (0 = all)", min=0)
    normalize: bool = setting(
        True, "Unicode NFC, newlines to \\n, trailing spaces, blank-line runs"
    )
    dedup: bool = setting(True, "drop exact duplicates (after normalisation)")
    shard_docs: int = setting(10_000, "documents per output shard", min=1)


# <|endoftext|> separates documents; the chat tokens are reserved for fine-tuning's template.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
]


@dataclass
class TokenizerSettings:
    kind: Literal["bpe", "char"] = setting("bpe", "byte-level BPE, or one token per character")
    vocab_size: int = setting(
        4096, "BPE: total vocabulary incl. 256 bytes and specials", min=257, max=2**17
    )
    pattern: str = setting("gpt4", "BPE pre-tokenizer split: gpt4, gpt2 or a custom regex")
    special_tokens: list[str] = setting(SPECIAL_TOKENS, "special tokens, never merged across")
    max_chars: int = setting(0, "BPE: train on at most this many characters (0 = all)", min=0)
    workers: int = setting(0, "processes that split and count the text (0 = all cores)", min=0)

    def __post_init__(self) -> None:
        if SPECIAL_TOKENS[0] not in self.special_tokens:
            raise SettingsError(
                f"special_tokens must include {SPECIAL_TOKENS[0]} (it separates documents)"
            )


@dataclass
class TokenizeSettings:
    val_fraction: float = setting(0.05, "share held out for validation", min=0.0, max=0.5)
    split: Literal["documents", "tail"] = setting(
        "documents", "hold out whole documents, or the last tokens of the corpus (one-file corpora)"
    )
    seed: int = setting(1337, "seed of the train/validation split")
    threads: int = setting(0, "encoding threads (0 = all cores)", min=0)
    shard_tokens: int = setting(100_000_000, "tokens per shard file", min=1024)


_GPT2 = dict(
    norm="layernorm",
    position="learned",
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    block_size=1024,
)
_LLAMA = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2's exact layout (learned positions, LayerNorm with bias, GELU, tied embeddings).
    "gpt2-124m": _GPT2 | dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": _GPT2 | dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": _GPT2 | dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1.5b": _GPT2 | dict(n_layer=48, n_head=25, n_embd=1600),
    # Llama-style: RMSNorm, rotary positions, SwiGLU, grouped-query attention, no bias, untied.
    "llama-125m": _LLAMA | dict(n_layer=12, n_head=12, n_kv_head=4, n_embd=768, block_size=2048),
    "llama-1b": _LLAMA
    | dict(
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        mlp_hidden=8192,
        block_size=2048,
        rope_theta=500000.0,
    ),
    # Tiny shapes that train in minutes on a laptop CPU.
    "gpt2-tiny": _GPT2 | dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "llama-tiny": _LLAMA | dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=256),
}


@dataclass
class ModelConfig:
    """One decoder-only transformer. Every choice here is tested; presets fill in families."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = MODEL_PRESETS

    preset: str = setting(
        "", "start from a named shape (keys you set win): " + ", ".join(MODEL_PRESETS)
    )
    vocab_size: int = setting(0, "vocabulary size (0 = the tokenizer's)", min=0)
    block_size: int = setting(256, "context length in tokens", min=1)
    n_layer: int = setting(4, "transformer blocks", min=1)
    n_head: int = setting(4, "attention (query) heads", min=1)
    n_kv_head: int = setting(0, "key/value heads: 0 = n_head (MHA), fewer = GQA, 1 = MQA", min=0)
    n_embd: int = setting(128, "embedding width (divisible by n_head)", min=1)
    norm: Literal["layernorm", "rmsnorm"] = setting("layernorm", "normalisation layer")
    norm_eps: float = setting(1e-5, "epsilon of the norms", min=0.0)
    position: Literal["learned", "rope", "none"] = setting("learned", "position information")
    rope_theta: float = setting(10000.0, "RoPE base", min=1.0)
    mlp: Literal["gelu", "swiglu", "relu2"] = setting("gelu", "MLP activation")
    mlp_hidden: int = setting(
        0, "MLP width (0 = 4 x n_embd; SwiGLU: 8/3 x n_embd rounded to 64)", min=0
    )
    qk_norm: bool = setting(False, "RMS-normalise queries and keys per head")
    tie_embeddings: bool = setting(True, "share the token embedding and the LM head")
    bias: bool = setting(False, "bias in linear layers and layer norms")
    dropout: float = setting(0.0, "dropout probability", min=0.0, max=0.99)
    logit_softcap: float = setting(0.0, "cap logits to +-c with c*tanh(x/c) (0 = off)", min=0.0)
    init_std: float = setting(0.02, "std of the normal initialisation", min=0.0)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise SettingsError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.kv_heads:
            raise SettingsError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise SettingsError(f"rope needs an even head size; n_embd / n_head = {self.head_dim}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # same parameter count as a 4x MLP with two matrices
            return -(-8 * self.n_embd // 3 // 64) * 64
        return 4 * self.n_embd


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
        "never", "auto: continue from the run's latest checkpoint"
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
class GenerateSettings:
    prompts: list[str] = setting(["\n"], "prompts sampled after pretraining")
    max_new_tokens: int = setting(100, "tokens to sample per prompt", min=1)
    temperature: float = setting(0.8, "sampling temperature (0 = greedy)", min=0.0)
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
        1.0, "> 1 makes tokens already in the text less likely (1 = none)", min=0.01
    )
    stop: list[str] = setting([], "stop strings: the text ends just before the first one")
    seed: int = setting(1337, "sampling seed")


@dataclass
class Recipe:
    name: str = setting("demo", "recipe name; the default work folder is work/<name>")
    curate: CurateSettings = field(default_factory=CurateSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    tokenize: TokenizeSettings = field(default_factory=TokenizeSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- validation

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any, meta: dict[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0], {})}s".replace(
            "a list of a ", "a list of "
        )
    word = _TYPE_WORDS[tp]
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{word} from {lo} to {hi}"
    if lo is not None:
        return f"{word} >= {lo}"
    return word


def _coerce(value: Any, tp: Any, meta: dict[str, Any], key: str) -> Any:
    def bad() -> SettingsError:
        return SettingsError(f"invalid setting {key}={value!r}: expected {_describe(tp, meta)}")

    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if typing.get_origin(tp) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: a list of one
        if not isinstance(value, list):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, {}, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
    elif tp is str and not isinstance(value, str):
        raise bad()
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad()
    return value


def _unknown_key(key: str, allowed: list[str], prefix: str) -> SettingsError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    where = prefix.rstrip(".") or "a recipe"
    return SettingsError(f"unknown setting {key}{hint}; {where} takes: {', '.join(allowed)}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build settings dataclass `cls` from a plain dict, validating every value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"invalid setting {prefix.rstrip('.') or 'recipe'}={data!r}: expected a mapping of settings"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and data.get("preset"):
        if data["preset"] not in presets:
            raise SettingsError(
                f"invalid setting {prefix}preset={data['preset']!r}: expected one of {', '.join(presets)}"
            )
        data = presets[data["preset"]] | data  # the preset's values, then the keys given
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, list(fields), prefix)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, dict(fields[name].metadata), key)
    try:
        return cls(**kwargs)
    except SettingsError as e:
        raise SettingsError(f"invalid settings in {prefix.rstrip('.')}: {e}") from None


def describe_section(cls: type, prefix: str) -> list[str]:
    """One help line per setting: `key (type, default): help`. Used by the CLI's --help."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        what = _describe(hints[f.name], dict(f.metadata))
        lines.append(f"  {prefix}{f.name} = {default!r}  ({what}) {f.metadata.get('help', '')}")
    return lines


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


def parse_override(item: str) -> tuple[str, Any]:
    """`model.n_layer=4` -> ("model.n_layer", 4). Values are read as YAML scalars or lists."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"invalid override {item!r}: expected KEY=VALUE, e.g. model.n_layer=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SettingsError(
                    f"invalid override {item!r}: {'.'.join(parts[: i + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (path or built-in name), apply `--set` overrides and validate it all."""
    data = _read_yaml(resolve_recipe_path(recipe))
    data = apply_overrides(data, overrides or [])
    return build(Recipe, data)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return build(Recipe, data)
