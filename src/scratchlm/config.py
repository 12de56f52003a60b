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


# The curation steps: per-document ones in any order, then the corpus-wide ones (data/curate.py).
DOCUMENT_STEPS = (
    "normalize", "gutenberg", "length", "gopher", "repetition", "c4", "fineweb",
    "badwords", "language", "quality", "pii",
)  # fmt: skip
CORPUS_STEPS = ("exact_dedup", "line_dedup", "near_dedup")


@dataclass
class CurateSettings:
    sources: list[str] = setting(
        ["builtin:pydoc"],
        "files, folders or globs (.txt .md .jsonl[.gz|.zst] .parquet .html .warc[.gz] .wet[.gz]), "
        "hf:<saved dataset dir or hub name>, or builtin:shakespeare / builtin:pydoc",
    )
    text_field: str = setting("text", "the JSONL / Parquet / HF datasets field with the text")
    max_docs: int = setting(0, "read at most this many documents (0 = all)", min=0)
    steps: list[str] = setting(
        ["normalize", "length", "exact_dedup"],
        "the steps, in order: " + ", ".join(DOCUMENT_STEPS + CORPUS_STEPS),
    )
    output_format: Literal["jsonl.zst", "jsonl", "parquet"] = setting(
        "jsonl.zst", "format of the output shards"
    )
    shard_docs: int = setting(10_000, "documents per output shard", min=1)
    workers: int = setting(0, "processes for the per-document steps (0 = all cores)", min=0)
    executor: Literal["local", "ray"] = setting(
        "local", "local: a process pool; ray: tasks on a Ray cluster (same output)"
    )
    max_doc_chars: int = setting(
        10_000_000, "documents longer than this are dropped as huge (0 = no limit)", min=0
    )
    # normalize / length
    fix_mojibake: bool = setting(True, "normalize: repair mis-decoded text with ftfy")
    min_words: int = setting(20, "length: drop documents with fewer words", min=0)
    max_words: int = setting(0, "length: drop documents with more words (0 = no limit)", min=0)
    # Gopher quality (Rae et al. 2021, table A1): the published thresholds
    gopher_min_words: int = setting(50, "gopher: fewest non-symbol words", min=0)
    gopher_max_words: int = setting(100_000, "gopher: most non-symbol words", min=0)
    min_mean_word_length: float = setting(3.0, "gopher: shortest mean word length", min=0.0)
    max_mean_word_length: float = setting(10.0, "gopher: longest mean word length", min=0.0)
    max_symbol_word_ratio: float = setting(
        0.1, "gopher: most '#' (and, separately, '...') per word", min=0.0
    )
    max_bullet_lines_ratio: float = setting(
        0.9, "gopher: most lines starting with a bullet", min=0.0
    )
    max_ellipsis_lines_ratio: float = setting(0.3, "gopher: most lines ending in '...'", min=0.0)
    min_alpha_words_ratio: float = setting(
        0.8, "gopher: fewest words with a letter", min=0.0, max=1.0
    )
    min_stop_words: int = setting(2, "gopher: fewest of the/be/to/of/and/that/have/with", min=0)
    # Gopher repetition (table A1)
    max_dup_line_frac: float = setting(0.3, "repetition: most duplicate lines", min=0.0)
    max_dup_para_frac: float = setting(0.3, "repetition: most duplicate paragraphs", min=0.0)
    max_dup_line_char_frac: float = setting(0.2, "repetition: most chars in dup lines", min=0.0)
    max_dup_para_char_frac: float = setting(
        0.2, "repetition: most chars in dup paragraphs", min=0.0
    )
    max_top_ngram_frac: list[float] = setting(
        [0.2, 0.18, 0.16], "repetition: most chars in the top 2-, 3-, 4-gram"
    )
    max_dup_ngram_frac: list[float] = setting(
        [0.15, 0.14, 0.13, 0.12, 0.11, 0.10], "repetition: most chars in repeated 5- to 10-grams"
    )
    # C4 (Raffel et al. 2020)
    c4_min_sentences: int = setting(5, "c4: fewest sentences left after the line rules", min=0)
    c4_min_words_per_line: int = setting(3, "c4: lines with fewer words are removed", min=0)
    c4_max_word_length: int = setting(1000, "c4: lines with a longer word are removed", min=1)
    c4_rules: list[str] = setting(
        ["citations", "terminal_punct", "lorem_ipsum", "javascript", "curly_bracket", "policy"],
        "c4: the rules applied (line rules remove lines; lorem_ipsum, curly_bracket drop documents)",
    )
    # FineWeb (Penedo et al. 2024)
    fineweb_min_punct_lines: float = setting(
        0.12, "fineweb: fewest lines ending in punctuation", min=0.0
    )
    fineweb_max_short_lines: float = setting(0.67, "fineweb: most lines of <= 30 chars", min=0.0)
    fineweb_max_dup_line_chars: float = setting(0.01, "fineweb: most chars in dup lines", min=0.0)
    fineweb_max_newline_ratio: float = setting(0.3, "fineweb: most newlines per word", min=0.0)
    # bad words, language, quality, PII
    badwords_dir: str = setting(
        "", "badwords: a folder of <language>.txt word lists ('' = the small lists shipped)"
    )
    badwords_language: str = setting("en", "badwords: whose list to use (a language code)")
    languages: list[str] = setting(["en"], "language: keep documents in these (fastText codes)")
    language_threshold: float = setting(
        0.65, "language: lowest fastText score kept", min=0.0, max=1.0
    )
    quality_model: str = setting(
        "", "quality: a fastText model from `scratchlm curate train-quality`"
    )
    quality_threshold: float = setting(
        0.5, "quality: lowest probability of the high-quality label kept", min=0.0, max=1.0
    )
    quality_top_fraction: float = setting(
        0.0,
        "quality: keep this top fraction by score instead (0 = use the threshold)",
        min=0.0,
        max=1.0,
    )
    pii: list[str] = setting(["email", "phone", "ip"], "pii: what to mask")
    # dedup
    line_dedup_min_chars: int = setting(
        1, "line_dedup: lines shorter than this are never removed", min=1
    )
    minhash_ngram: int = setting(5, "near_dedup: words per shingle", min=1)
    minhash_permutations: int = setting(128, "near_dedup: MinHash permutations", min=1)
    minhash_bands: int = setting(16, "near_dedup: LSH bands (must divide the permutations)", min=1)
    near_dedup_threshold: float = setting(
        0.8, "near_dedup: estimated Jaccard similarity that makes a duplicate", min=0.0, max=1.0
    )
    seed: int = setting(1337, "near_dedup: seed of the hash permutations")

    def __post_init__(self) -> None:
        known = DOCUMENT_STEPS + CORPUS_STEPS
        for step in self.steps:
            if step not in known:
                raise SettingsError(
                    f"invalid setting curate.steps: unknown step {step!r}; steps are {', '.join(known)}"
                )
        if len(set(self.steps)) != len(self.steps):
            raise SettingsError("invalid setting curate.steps: a step is listed twice")
        corpus = [i for i, s in enumerate(self.steps) if s in CORPUS_STEPS]
        document = [i for i, s in enumerate(self.steps) if s in DOCUMENT_STEPS]
        if corpus and document and min(corpus) < max(document):
            raise SettingsError(
                "invalid setting curate.steps: the corpus-wide steps (exact_dedup, line_dedup, "
                "near_dedup) read every document, so they come after the per-document steps"
            )
        if "quality" in self.steps and not self.quality_model:
            raise SettingsError(
                "curate.steps has quality but curate.quality_model is not set: train one with "
                "`scratchlm curate train-quality`"
            )
        if self.minhash_permutations % self.minhash_bands:
            raise SettingsError(
                f"invalid setting curate.minhash_bands={self.minhash_bands}: it must divide "
                f"curate.minhash_permutations={self.minhash_permutations}"
            )
        rules = {
            "citations",
            "terminal_punct",
            "lorem_ipsum",
            "javascript",
            "curly_bracket",
            "policy",
        }
        if set(self.c4_rules) - rules:
            raise SettingsError(
                f"invalid setting curate.c4_rules: unknown {sorted(set(self.c4_rules) - rules)}; "
                f"rules are {', '.join(sorted(rules))}"
            )
        unknown = set(self.pii) - {"email", "phone", "ip"}
        if unknown:
            raise SettingsError(
                f"invalid setting curate.pii: unknown {sorted(unknown)}; choose email, phone, ip"
            )


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
    task: Literal["sft", "classify", "dpo"] = setting(
        "sft", "instruction tuning, a classification head, or preference tuning"
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
    warmup_steps: int = setting(10, "linear warmup steps, then cosine decay to 10%", min=0)
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
    eval_every: int = setting(50, "steps between validation evaluations", min=1)
    sample_prompts: list[str] = setting(
        [], "sft/dpo: prompts answered at each evaluation ('' = the first 2 validation ones)"
    )
    max_new_tokens: int = setting(60, "sft/dpo: longest sample answer", min=1)
    seed: int = setting(1337, "seed for the split, data order, head initialisation")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to train")
    threads: int = setting(0, "torch CPU threads (0 = all cores)", min=0)


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
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

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
