"""The `tokenizer train` stage: learn a vocabulary from a stream of texts and save tokenizer.json."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import StageError
from scratchlm.tokenizer.bpe import count_pretokens, train_bpe
from scratchlm.tokenizer.settings import TokenizerSettings
from scratchlm.tokenizer.tokenizer import BPETokenizer, CharTokenizer, special_splitter


def _take_chars(texts: Iterable[str], limit: int) -> Iterator[str]:
    used = 0
    for text in texts:
        if limit and used >= limit:
            return
        text = text[: limit - used] if limit else text
        used += len(text)
        yield text


def _between_specials(texts: Iterable[str], specials: list[str]) -> Iterator[str]:
    """The text between special-token strings: "<|endoftext|>" in the training text is one
    token when encoded with specials allowed, so its pieces ("<|", "endoftext") must not be
    learned as merges."""
    splitter = special_splitter(specials)
    for text in texts:
        if splitter is None:
            yield text
            continue
        yield from (piece for piece in splitter.split(text) if piece and piece not in specials)


def train_tokenizer(
    texts: Iterable[str], settings: TokenizerSettings, progress: bool = True
) -> BPETokenizer | CharTokenizer:
    """Train a tokenizer: BPE of `settings.vocab_size` tokens (bytes + merges + specials),
    or a character-level vocabulary of every character seen."""
    if settings.kind == "char":  # every character of the corpus, or tokenizing it would fail
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise StageError("tokenizer: the training text is empty")
        return CharTokenizer("".join(chars), settings.special_tokens)
    texts = _take_chars(texts, settings.max_chars)
    num_merges = settings.vocab_size - 256 - len(settings.special_tokens)
    if num_merges < 0:
        raise StageError(
            f"tokenizer.vocab_size={settings.vocab_size} leaves no room for 256 bytes "
            f"and {len(settings.special_tokens)} special tokens"
        )
    workers = settings.workers or os.cpu_count() or 1
    texts = _between_specials(texts, list(settings.special_tokens))
    counts = count_pretokens(texts, settings.pattern, workers=workers, progress=progress)
    if not counts:
        raise StageError("tokenizer: the training text is empty")
    merges = train_bpe(counts, num_merges, progress=progress)
    return BPETokenizer.from_merges(merges, settings.pattern, settings.special_tokens)


@dataclass
class TokenizerSummary:
    kind: str
    vocab_size: int
    merges: int
    fingerprint: str
    seconds: float

    def headline(self) -> str:
        return f"{self.kind} vocab {self.vocab_size:,} ({self.merges:,} merges)"


def train_tokenizer_stage(
    texts: Iterable[str], settings: TokenizerSettings, out_dir: Path, progress: bool = True
) -> TokenizerSummary:
    """Train on `texts` and write out_dir/tokenizer.json."""
    start = time.time()
    tok = train_tokenizer(texts, settings, progress)
    tok.save(out_dir / "tokenizer.json")
    return TokenizerSummary(
        kind=tok.kind,
        vocab_size=tok.vocab_size,
        merges=len(tok.merges) if isinstance(tok, BPETokenizer) and tok.merges else 0,
        fingerprint=tok.fingerprint(),
        seconds=round(time.time() - start, 2),
    )
