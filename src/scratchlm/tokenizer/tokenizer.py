"""Tokenizers: byte-level BPE (ranks and a split pattern, encoded at native speed by tiktoken),
one token per character, and the `Tokenizer` interface both of them offer.

tiktoken is a BPE *encoder* for a given table of ranks; it cannot train. We train the merges
ourselves (bpe.py) and hand the ranks to `tiktoken.Encoding`, whose rule (merge the pair whose
joined bytes rank lowest) is the one our plain-Python reference encoder implements.

File format (tokenizer.json, versioned):
    {"format": "scratchlm-bpe", "version": 1, "kind": "bpe", "pattern": "<regex>",
     "merges": [[a, b], ...],            trained here: token 256 + i is merge i, or
     "tokens": {"<id>": "<base64>"},     imported: each token's bytes (e.g. GPT-2's order)
     "special_tokens": {"<|endoftext|>": 4088, ...}, "tie_rule": "..."}
A character-level tokenizer is {"kind": "char", "chars": "...", "special_tokens": {...}}.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import regex
import tiktoken

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json, json_sha256
from scratchlm.tokenizer.bpe import TIE_RULE, encode_reference, merges_to_vocab, resolve_pattern
from scratchlm.tokenizer.settings import SPECIAL_TOKENS

FORMAT, VERSION = "scratchlm-bpe", 1
ENDOFTEXT = SPECIAL_TOKENS[0]


def special_splitter(specials: Iterable[str]) -> regex.Pattern | None:
    """A regex whose split() keeps the special-token strings as pieces of their own.

    Where one special token starts another ("<|a|>" and "<|a|><|a|>"), the longest one that
    matches at a position wins, as in HF tokenizers: alternation takes the first alternative
    that matches, so the alternatives go longest first."""
    ordered = sorted(specials, key=lambda t: (-len(t), t))
    if not ordered:
        return None
    return regex.compile("(" + "|".join(regex.escape(t) for t in ordered) + ")")


def _encode_with_specials(
    text: str, specials: Mapping[str, int], splitter: regex.Pattern | None, ordinary: Any
) -> list[int]:
    """Special-token strings become their ids; the text between them is encoded by `ordinary`."""
    ids: list[int] = []
    for piece in splitter.split(text) if splitter else [text]:
        ids += [specials[piece]] if piece in specials else ordinary(piece)
    return ids


@runtime_checkable
class Tokenizer(Protocol):
    """What every stage needs of a tokenizer; `BPETokenizer` and `CharTokenizer` both are one."""

    kind: str  # "bpe" or "char"
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...

    def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def fingerprint(self) -> str: ...

    def save(self, path: str | os.PathLike) -> None: ...


class BPETokenizer:
    """Byte-level BPE. `vocab[i]` is token i's bytes; special tokens take ids of their own."""

    kind = "bpe"

    def __init__(
        self,
        vocab: Mapping[int, bytes] | Sequence[bytes],
        pattern: str,
        special_tokens: Mapping[str, int] | Iterable[str] = (ENDOFTEXT,),
        merges: Sequence[tuple[int, int]] | None = None,
    ):
        self.vocab = dict(vocab) if isinstance(vocab, Mapping) else dict(enumerate(vocab))
        self.pattern = resolve_pattern(pattern)
        self.merges = [tuple(m) for m in merges] if merges is not None else None
        self.ranks = {b: i for i, b in self.vocab.items()}
        if len(self.ranks) != len(self.vocab):
            raise ValueError("two token ids spell the same bytes")
        if not isinstance(special_tokens, Mapping):  # a list: ids follow the vocabulary
            first = max(self.vocab) + 1
            special_tokens = {tok: first + i for i, tok in enumerate(special_tokens)}
        self.special_tokens = dict(special_tokens)
        if clash := set(self.special_tokens.values()) & set(self.vocab):
            raise ValueError(f"special token ids {sorted(clash)} are also ordinary token ids")
        self._enc = tiktoken.Encoding(
            name="scratchlm",
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )
        self._special_split = special_splitter(self.special_tokens)

    @classmethod
    def from_merges(
        cls,
        merges: Sequence[tuple[int, int]],
        pattern: str,
        special_tokens: Iterable[str] = (ENDOFTEXT,),
    ) -> BPETokenizer:
        return cls(merges_to_vocab(merges), pattern, list(special_tokens), merges=merges)

    @property
    def vocab_size(self) -> int:
        return max([*self.vocab, *self.special_tokens.values()]) + 1

    @property
    def eot_id(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Encode text. Special-token strings are ordinary text unless `allow_special`.

        With `allow_special`, we split at the special tokens ourselves: tiktoken tries them in
        its hash map's order, so of two overlapping ones it does not reliably take the longer."""
        if allow_special:
            return _encode_with_specials(
                text, self.special_tokens, self._special_split, self._enc.encode_ordinary
            )
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
        """Encode many ordinary texts at once; tiktoken releases the GIL in each thread."""
        return self._enc.encode_ordinary_batch(texts, num_threads=threads or os.cpu_count() or 1)

    def encode_reference(self, text: str, allow_special: bool = False) -> list[int]:
        """The same ids as `encode`, computed in plain Python (slow; for tests and reading)."""

        def ordinary(piece: str) -> list[int]:
            return encode_reference(piece, self.ranks, self.pattern)

        if allow_special:
            return _encode_with_specials(text, self.special_tokens, self._special_split, ordinary)
        return ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; a token sequence that ends mid-character decodes to U+FFFD there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "kind": "bpe",
            "pattern": self.pattern,
        }
        if self.merges is not None:
            data |= {"tie_rule": TIE_RULE, "merges": [list(m) for m in self.merges]}
        else:
            data["tokens"] = {
                str(i): base64.b64encode(t).decode("ascii") for i, t in sorted(self.vocab.items())
            }
        data["special_tokens"] = self.special_tokens
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        if "merges" in data:
            merges = [tuple(m) for m in data["merges"]]
            return cls(
                merges_to_vocab(merges), data["pattern"], data["special_tokens"], merges=merges
            )
        vocab = {int(i): base64.b64decode(t) for i, t in data["tokens"].items()}
        return cls(vocab, data["pattern"], data["special_tokens"])

    def fingerprint(self) -> str:
        return json_sha256(self.to_dict())[:16]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


class CharTokenizer:
    """One token per character of the training text (the classic small baselines), then specials."""

    kind = "char"

    def __init__(self, chars: str, special_tokens: Iterable[str] = (ENDOFTEXT,)):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {tok: len(self.chars) + i for i, tok in enumerate(special_tokens)}
        self.itos = {i: c for c, i in self.stoi.items()} | {
            i: s for s, i in self.special_tokens.items()
        }
        self._special_split = special_splitter(self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return _encode_with_specials(
                text, self.special_tokens, self._special_split, self.encode
            )
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise StageError(
                f"character {e.args[0]!r} is not in this character-level vocabulary"
            ) from None

    def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": "char",
            "chars": self.chars,
            "special_tokens": self.special_tokens,
        }

    def fingerprint(self) -> str:
        return json_sha256(self.to_dict())[:16]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer | CharTokenizer:
    """Read our tokenizer.json (BPE or char-level), with a clear error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(
            f"{path}: no tokenizer here: run `scratchlm tokenizer train` first"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: not a tokenizer file: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (
            " (an HF tokenizer? convert it with `scratchlm tokenizer import`)"
            if isinstance(data, dict) and "model" in data
            else ""
        )
        raise StageError(f"{path}: not a scratchlm tokenizer{hint}")
    if data.get("version") != VERSION:
        raise StageError(
            f"{path}: tokenizer format version {data.get('version')}; this scratchlm reads version {VERSION}"
        )
    if data.get("kind") == "char":
        specials = sorted(data["special_tokens"].items(), key=lambda kv: kv[1])
        return CharTokenizer(data["chars"], [s for s, _ in specials])
    return BPETokenizer.from_dict(data)
