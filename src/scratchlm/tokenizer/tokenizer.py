"""The Tokenizer: our merges and split pattern, encoded at native speed by tiktoken.

tiktoken is a BPE *encoder* for a given table of merges; it cannot train. We train the
merges ourselves (bpe.py) and hand them to `tiktoken.Encoding`, whose rule (merge the pair
whose joined bytes rank lowest) is the one our reference encoder implements in Python.

File format (tokenizer.json, versioned):
    {"format": "scratchlm-bpe", "version": 1, "pattern": "<regex>", "merges": [[a, b], ...],
     "special_tokens": {"<|endoftext|>": 4095}, "tie_rule": "..."}
Token 256 + i is merge i; special tokens take the ids after the last merge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json, json_sha256
from scratchlm.tokenizer.bpe import TIE_RULE, encode_reference, merges_to_vocab, resolve_pattern

FORMAT, VERSION = "scratchlm-bpe", 1
ENDOFTEXT = "<|endoftext|>"


class Tokenizer:
    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str,
        special_tokens: Iterable[str] = (ENDOFTEXT,),
    ):
        self.merges = [tuple(m) for m in merges]
        self.pattern = resolve_pattern(pattern)
        self.vocab = merges_to_vocab(self.merges)
        self.ranks = {b: i for i, b in enumerate(self.vocab)}
        self.special_tokens = {tok: len(self.vocab) + i for i, tok in enumerate(special_tokens)}
        self._enc = tiktoken.Encoding(
            name="scratchlm",
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Encode text. Special-token strings are ordinary text unless `allow_special`."""
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
        """Encode many texts of ordinary text at once; tiktoken releases the GIL per thread."""
        return self._enc.encode_ordinary_batch(texts, num_threads=threads or os.cpu_count() or 1)

    def encode_reference(self, text: str) -> list[int]:
        """The same ids as `encode`, computed in plain Python (slow; for tests and reading)."""
        return encode_reference(text, self.ranks, self.pattern)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "tie_rule": TIE_RULE,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }

    def fingerprint(self) -> str:
        return json_sha256(self.to_dict())[:16]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StageError(
                f"{path}: no tokenizer here: run `scratchlm tokenizer train` first"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{path}: not a tokenizer file: {e}") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise StageError(
                f"{path}: expected format {FORMAT} version {VERSION}, found {data.get('format')} {data.get('version')}"
            )
        specials = sorted(data["special_tokens"].items(), key=lambda kv: kv[1])
        tok = cls([tuple(m) for m in data["merges"]], data["pattern"], [s for s, _ in specials])
        if tok.special_tokens != data["special_tokens"]:
            raise StageError(f"{path}: special token ids do not follow the merges")
        return tok
