"""Settings of the two tokenizer stages: training the vocabulary, and encoding the corpus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchlm.errors import SettingsError
from scratchlm.settings import setting

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
    pattern: str = setting(
        "gpt4", "BPE pre-tokenizer split: gpt4, gpt4-digits (one digit a piece), gpt2 or a regex"
    )
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
