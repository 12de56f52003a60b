"""Reading and writing the tokenizer formats the rest of the ecosystem uses.

- HF `tokenizers` tokenizer.json (+ tokenizer_config.json for `transformers.AutoTokenizer`)
- GPT-2 style vocab.json + merges.txt
- tiktoken's .tiktoken ranks (one "base64(token) rank" per line)

Byte-level BPE in the HF / GPT-2 files spells each byte as a printable character
(`bytes_to_unicode`, so a space is "Ġ") and ranks *pairs* by their line in merges.txt; tiktoken
and we rank the *merged bytes*. `derive_merges` turns our ranks into the equivalent pair list,
and HF's `ignore_merges` mirrors tiktoken's rule that a pre-token which is itself a token is
taken whole.
"""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json, atomic_write_text
from scratchlm.tokenizer.bpe import PATTERNS, encode_chunk
from scratchlm.tokenizer.tokenizer import ENDOFTEXT, BPETokenizer


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes stand for
    themselves, the rest (space, control bytes...) are shifted to code points from 256 up."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, shift = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return chars


def _to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _to_bytes(text: str) -> bytes:
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    try:
        return bytes(inverse[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{text!r} is not a byte-level token (character {e.args[0]!r})") from None


def hf_merges(tok: BPETokenizer) -> list[tuple[bytes, bytes]]:
    """Our ranks as a pair-rank merge list (in rank order), for HF and GPT-2 files."""
    merges = []
    for rank, token in sorted(tok.vocab.items()):
        if len(token) == 1:
            continue
        parts = encode_chunk(token, tok.ranks, max_rank=rank)
        if len(parts) != 2 and tok.merges is not None:
            # BPE of its own bytes cannot reach this token (lower-ranked tokens cut it
            # differently); keep the pair that training merged, so HF still knows the token.
            a, b = tok.merges[rank - 256]
            parts = [tok.vocab[a], tok.vocab[b]]
        if len(parts) != 2:
            raise ValueError(
                f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens"
            )
        merges.append((parts[0], parts[1]))
    return merges


# --------------------------------------------------------------------------- export


def hf_tokenizer_json(tok: BPETokenizer) -> dict[str, Any]:
    """The HF `tokenizers` document for `tok`: Split(our regex) + ByteLevel, BPE, specials."""
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": tok.pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {_to_str(t): i for i, t in sorted(tok.vocab.items())},
            "merges": [[_to_str(a), _to_str(b)] for a, b in hf_merges(tok)],
        },
    }


def export_tokenizer(
    tok: BPETokenizer,
    out_dir: str | os.PathLike,
    model_max_length: int | None = None,
    chat_template: str | None = None,
) -> list[Path]:
    """Write every interchange format of `tok` into `out_dir`; return the files written.

    tokenizer.json + tokenizer_config.json  HF tokenizers / transformers.AutoTokenizer
    vocab.json + merges.txt                 GPT-2 style (exact only with pattern gpt2,
                                            since these files cannot carry a split pattern)
    tokenizer.tiktoken                      tiktoken ranks (the pattern is in tokenizer.json)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = hf_tokenizer_json(tok)
    atomic_write_json(out / "tokenizer.json", doc)
    eot = ENDOFTEXT if ENDOFTEXT in tok.special_tokens else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": None,
        "pad_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 1_000_000_000_000_000_019_884_624_838_656,
    }
    if chat_template:
        config["chat_template"] = chat_template
    atomic_write_json(out / "tokenizer_config.json", config)
    vocab = dict(doc["model"]["vocab"]) | {s: i for s, i in tok.special_tokens.items()}
    atomic_write_json(out / "vocab.json", vocab)
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in doc["model"]["merges"]]
    atomic_write_text(out / "merges.txt", "\n".join(lines) + "\n")
    ranks = "".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in sorted(tok.vocab.items()))
    atomic_write_text(out / "tokenizer.tiktoken", ranks)
    return [
        out / n
        for n in (
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.tiktoken",
        )
    ]


# --------------------------------------------------------------------------- import


def from_vocab_and_merges(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    pattern: str,
    specials: dict[str, int] | None = None,
) -> BPETokenizer:
    """A byte-level BPE vocabulary (GPT-2 / HF spelling) as our BPETokenizer, checked for exactness.

    Our encoder (tiktoken's rule) ranks merged bytes by token id, HF ranks pairs by their line
    in merges.txt; the two agree when merge i's token has a larger id than merge i-1's. GPT-2's
    vocabulary and every file we export are built that way; anything else is refused.
    """
    specials = dict(specials or {})
    merged = {a + b for a, b in merges}
    last = -1
    for a, b in merges:
        i = vocab.get(a + b)
        if i is None:
            raise StageError(f"merge {a!r} {b!r} makes {a + b!r}, which is not in the vocabulary")
        if i <= last:
            raise StageError(
                "this vocabulary's ids do not follow its merge order; it cannot be encoded exactly by rank"
            )
        last = i
    by_id: dict[int, bytes] = {}
    for text, i in vocab.items():
        if text in specials:
            continue
        if len(text) > 1 and text not in merged:
            if text.startswith("<|") and text.endswith("|>"):
                specials[text] = i  # e.g. GPT-2's <|endoftext|>, listed in vocab.json
                continue
            raise StageError(f"token {text!r} is made by no merge and is not a special token")
        by_id[i] = _to_bytes(text)
    missing = set(range(256)) - {t[0] for t in by_id.values() if len(t) == 1}
    if missing:
        raise StageError(
            f"{len(missing)} of the 256 single-byte tokens are missing: not byte-level BPE"
        )
    return BPETokenizer(by_id, pattern, specials)


def _pattern_of(pre_tokenizer: dict[str, Any] | None) -> str:
    """The split regex of an HF pre-tokenizer: a Split's regex, or GPT-2's for ByteLevel(use_regex)."""
    if not pre_tokenizer:
        raise StageError("the HF tokenizer has no pre-tokenizer; byte-level BPE needs ByteLevel")
    parts = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    for part in parts:
        if part.get("type") == "Split" and "Regex" in part.get("pattern", {}):
            return part["pattern"]["Regex"]
    if any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts):
        return PATTERNS["gpt2"]
    raise StageError(
        "the HF tokenizer's pre-tokenizer is not byte-level BPE (Split regex + ByteLevel)"
    )


def import_tokenizer(src: str | os.PathLike, pattern: str | None = None) -> BPETokenizer:
    """Read an HF tokenizer.json, a folder holding one (or vocab.json + merges.txt), or a
    .tiktoken file (with `pattern`, default gpt4)."""
    path = Path(src)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return import_gpt2(path / "vocab.json", path / "merges.txt", pattern or "gpt2")
        elif (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return import_gpt2(
                path / "encoder.json", path / "vocab.bpe", pattern or "gpt2"
            )  # OpenAI's names
        else:
            raise StageError(
                f"{src}: no tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe"
            )
    if not path.is_file():
        raise StageError(f"{src}: no such file")
    if path.suffix == ".tiktoken":
        return import_tiktoken(path, pattern or "gpt4")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: not JSON: {e}") from None
    if doc.get("format") == "scratchlm-bpe":
        if doc.get("kind") == "char":
            raise StageError(f"{path}: a character-level tokenizer is not byte-level BPE")
        return BPETokenizer.from_dict(doc)
    model = doc.get("model", {})
    if model.get("type") != "BPE":
        raise StageError(
            f"{path}: model type {model.get('type')!r}; only byte-level BPE can be imported"
        )
    _check_pipeline(doc, path)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = {t["content"]: t["id"] for t in doc.get("added_tokens", []) if t.get("special")}
    return from_vocab_and_merges(
        model["vocab"], merges, pattern or _pattern_of(doc.get("pre_tokenizer")), specials
    )


def _check_pipeline(doc: dict[str, Any], path: Path) -> None:
    """Refuse the HF options our encoder does not reproduce, rather than encode differently."""
    if doc.get("normalizer"):
        raise StageError(
            f"{path}: has a normalizer ({doc['normalizer'].get('type')}); scratchlm encodes raw text"
        )
    pre = doc.get("pre_tokenizer") or {}
    for part in pre.get("pretokenizers", [pre]):
        if part.get("type") == "ByteLevel" and part.get("add_prefix_space"):
            raise StageError(f"{path}: ByteLevel add_prefix_space=true is not supported")
        if part.get("type") == "Split" and (
            part.get("behavior") != "Isolated" or part.get("invert")
        ):
            raise StageError(f"{path}: only Split(behavior=Isolated, invert=false) is supported")


def import_gpt2(
    vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, pattern: str = "gpt2"
) -> BPETokenizer:
    """GPT-2's own files (or any in their format): vocab.json + merges.txt."""
    vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return from_vocab_and_merges(vocab, merges, pattern)  # type: ignore[arg-type]


def import_tiktoken(
    path: str | os.PathLike, pattern: str = "gpt4", specials: list[str] | None = None
) -> BPETokenizer:
    """A .tiktoken file: ranks only; the split pattern and special tokens come from the caller."""
    vocab: dict[int, bytes] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            vocab[int(rank)] = base64.b64decode(token)
        except ValueError:
            raise StageError(f"{path}:{lineno}: expected 'BASE64 RANK'") from None
    return BPETokenizer(vocab, pattern, specials if specials is not None else [ENDOFTEXT])
