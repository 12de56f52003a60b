"""Perplexity and bits per byte of held-out text, with a sliding window for long documents.

Each document is scored as the model saw documents in training: after an <|endoftext|>, every
token predicted from the ones before it. A document longer than the context is read in windows
of `block_size` tokens that advance by `stride`; each window scores only the tokens not scored
yet, so every token but the first window's has at least block_size - stride tokens of context.

    perplexity    exp(nats per token)          depends on the tokenizer
    bits per byte nats / ln 2 / UTF-8 bytes    does not: compares models across tokenizers
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.data.sources import iter_documents
from scratchlm.errors import StageError
from scratchlm.tokenizer.shards import TokenStream, load_meta, made_with, token_dtype
from scratchlm.tokenizer.tokenizer import Tokenizer


def effective_stride(window: int, stride: int) -> int:
    """The stride a setting of `stride` means: 0 is half the window."""
    return stride or max(window // 2, 1)


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) for a sequence of n tokens: inputs ids[begin:end-1] predict
    ids[begin+1:end], of which targets from index `first` on are new in this window."""
    if not 0 < stride <= window:
        raise StageError(f"eval.stride={stride} must be from 1 to the context length {window}")
    out, begin, first = [], 0, 1
    while True:
        end = min(begin + window + 1, n)
        out.append((begin, end, first))
        if end == n:
            return out
        first, begin = end, begin + stride
        # The last window may hold fewer new tokens than `stride`; it still ends at n.
        begin = min(begin, max(n - window - 1, 0))


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position (B, T), as float64 on the CPU. Only the targets' entries
    leave the device: a (B, T, vocab) float64 copy would not fit for a 50k vocabulary."""
    logits = logits.float()
    picked = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
    return picked.double().cpu()


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module,
    ids: list[int],
    stride: int = 0,
    window: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i = 1 .. len(ids) - 1, in float64 on the CPU.

    window defaults to the model's block_size and stride to half of it."""
    window = window or model.cfg.block_size
    stride = effective_stride(window, stride)
    device = next(model.parameters()).device
    x = torch.tensor(ids, dtype=torch.long)
    out = torch.empty(max(len(ids) - 1, 0), dtype=torch.float64)
    spans = windows(len(ids), window, stride) if len(ids) > 1 else []
    for i in range(0, len(spans), batch_size):
        group = spans[i : i + batch_size]
        width = max(end - begin - 1 for begin, end, _ in group)
        # Right padding: a causal model's real positions never see the padding after them.
        inputs = torch.zeros(len(group), width, dtype=torch.long)
        targets = torch.zeros(len(group), width, dtype=torch.long)
        for row, (begin, end, _) in enumerate(group):
            inputs[row, : end - begin - 1] = x[begin : end - 1]
            targets[row, : end - begin - 1] = x[begin + 1 : end]
        logp = target_logprobs(model(inputs.to(device))[0], targets.to(device))
        for row, (begin, end, first) in enumerate(group):
            out[first - 1 : end - 1] = logp[row, first - begin - 1 : end - begin - 1]
    return out


def document_bytes(tok: Tokenizer, ids: list[int]) -> int:
    """UTF-8 bytes of the text that `ids` spell (BPE: exact bytes, even mid-character)."""
    if hasattr(tok, "decode_bytes"):
        return len(tok.decode_bytes(ids))
    return len(tok.decode(ids).encode("utf-8"))


@dataclass
class Perplexity:
    """Sums over documents; the rates are derived, so that runs add up exactly."""

    nll: float = 0.0  # nats, summed over every scored token
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, nll: float, tokens: int, nbytes: int) -> None:
        self.nll += nll
        self.tokens += tokens
        self.bytes += nbytes
        self.documents += 1

    def to_dict(self) -> dict[str, Any]:
        nats = self.nll / max(self.tokens, 1)
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nats_per_token": nats,
            "perplexity": math.exp(min(nats, 700)),
            "bits_per_byte": self.nll / math.log(2) / max(self.bytes, 1),
            "bytes_per_token": self.bytes / max(self.tokens, 1),
        }


def perplexity(
    model: torch.nn.Module,
    tok: Tokenizer,
    documents: Iterable[list[int]],
    stride: int = 0,
    batch_size: int = 16,
    max_tokens: int = 0,
) -> Perplexity:
    """Score documents given as token ids (without separators); stop after `max_tokens`."""
    result = Perplexity()
    for ids in documents:
        if max_tokens:
            ids = ids[: max_tokens - result.tokens]  # the last document may be cut short
        if not ids:
            continue
        logp = token_logprobs(model, [tok.eot_id, *ids], stride, batch_size=batch_size)
        result.add(-logp.sum().item(), len(ids), document_bytes(tok, ids))
        if max_tokens and result.tokens == max_tokens:
            break
    if not result.tokens:
        raise StageError("perplexity: the held-out text has no tokens")
    return result


# --------------------------------------------------------------------------- held-out text


def shard_documents(tokens_dir: Path, tok: Tokenizer, split: str = "") -> Iterator[list[int]]:
    """The documents of a tokens folder's `split` as token ids ('' = validation, or train if it
    has none)."""
    meta = load_meta(tokens_dir)
    if not made_with(meta, tok):
        raise StageError(
            f"{tokens_dir} was made with another tokenizer than the model's; pass text instead (--text FILE)"
        )
    split = split or ("val" if meta["files"]["val"] else "train")
    stream = TokenStream(tokens_dir, meta["files"][split], meta["dtype"])
    doc: list[int] = []
    chunk = 1 << 20
    for start in range(0, len(stream), chunk):
        ids = stream.read(start, min(chunk, len(stream) - start))
        # each document ends with <|endoftext|>: cut after each one (a document may span chunks)
        for piece in np.split(ids, np.flatnonzero(ids == tok.eot_id) + 1):
            ended = len(piece) and piece[-1] == tok.eot_id
            doc.extend(piece[:-1].tolist() if ended else piece.tolist())
            if ended:
                if doc:
                    yield doc
                doc = []
    if doc:
        yield doc


def text_documents(path: Path, text_field: str = "text") -> list[str]:
    """A text file is one document; a JSONL file holds one per line (its `text_field`)."""
    if not path.exists():
        raise StageError(f"{path}: no such file")
    texts = [d.text for d in iter_documents([str(path)], text_field) if d.text]
    if not texts:
        raise StageError(f"{path}: no text to evaluate on")
    return texts


def bin_documents(path: Path, tok: Tokenizer) -> list[list[int]]:
    """The documents of one raw shard file (train_000.bin, ...) made with `tok`."""
    ids = np.fromfile(path, dtype=token_dtype(tok.vocab_size)).astype(np.int64)
    if len(ids) and ids.max() >= tok.vocab_size:
        raise StageError(f"{path}: token id {ids.max()} is outside the model's tokenizer")
    # Each document is followed by <|endoftext|>: split after each one and drop it.
    pieces = np.split(ids, np.flatnonzero(ids == tok.eot_id) + 1)
    docs = [p[p != tok.eot_id] for p in pieces]
    return [d.tolist() for d in docs if len(d)]


def heldout_documents(source: Path, tok: Tokenizer) -> list[list[int]]:
    """Token ids of each held-out document from a tokens folder, a .bin shard or a text /
    JSONL file."""
    if source.is_dir():
        return list(shard_documents(source, tok))
    if source.suffix == ".bin" and source.is_file():
        return bin_documents(source, tok)
    return [tok.encode(t) for t in text_documents(source)]
