"""A byte-level BPE tokenizer as llama.cpp's GGUF vocabulary (`tokenizer.ggml.*`).

llama.cpp's "gpt2" tokenizer model is byte-level BPE in GPT-2's spelling (a space is "Ġ"),
the same strings as the HF files of tokenizer/formats.py: the token list by id, one
"left right" line per merge, and a type per token (special tokens are CONTROL: never produced
from ordinary text, never printed unless asked for). llama.cpp cannot read a split regex from
the file: it names one of its built-in pre-tokenizers instead, so only patterns it has are
exported:

    ours        llama.cpp pre-tokenizer   notes
    gpt4        llama-bpe                 also takes a pre-token whole when it is a token,
                                          as tiktoken does
    gpt2        gpt-2

Their regexes equal ours except where the text *ends* in whitespace holding a newline with
spaces after it ("...\\n  "): tiktoken's `\\s++$` keeps that run as one piece, llama-bpe cuts
it after the newline. Nothing else differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchlm.errors import StageError
from scratchlm.tokenizer.bpe import PATTERNS
from scratchlm.tokenizer.formats import hf_tokenizer_json
from scratchlm.tokenizer.tokenizer import BPETokenizer, Tokenizer

# llama.cpp's names for the split patterns it implements, keyed by our regex.
LLAMA_CPP_PRE = {PATTERNS["gpt4"]: "llama-bpe", PATTERNS["gpt2"]: "gpt-2"}
# gguf.TokenType: what llama.cpp does with a token
NORMAL, CONTROL, UNUSED = 1, 3, 5


@dataclass
class GGUFVocab:
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]  # tokenizer.ggml.tokens, by id
    types: list[int]  # tokenizer.ggml.token_type
    merges: list[str]  # tokenizer.ggml.merges, "left right" in rank order


def gguf_vocab(tok: Tokenizer, n_vocab: int) -> GGUFVocab:
    """The vocabulary of `tok` for a model with `n_vocab` embedding rows (ids the tokenizer
    does not use become unused placeholders, as llama.cpp's converter writes them)."""
    if not isinstance(tok, BPETokenizer):
        raise StageError(
            f"GGUF export needs a byte-level BPE tokenizer; this run's is {tok.kind!r}, "
            "which llama.cpp cannot read"
        )
    pre = LLAMA_CPP_PRE.get(tok.pattern)
    if pre is None:
        raise StageError(
            f"the tokenizer splits text with a custom pattern ({tok.pattern[:60]!r}...); "
            "llama.cpp only has built-in pre-tokenizers, and only our gpt4 and gpt2 patterns "
            "have an exact one (llama-bpe, gpt-2). Train the tokenizer with "
            "tokenizer.pattern=gpt4 or gpt2 to export it"
        )
    if tok.vocab_size > n_vocab:
        raise StageError(f"the tokenizer has {tok.vocab_size} tokens, the model {n_vocab}")
    doc = hf_tokenizer_json(tok)
    by_id = {i: s for s, i in doc["model"]["vocab"].items()}
    specials = {i: s for s, i in tok.special_tokens.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        elif i in specials:
            tokens.append(specials[i])
            types.append(CONTROL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [f"{a} {b}" for a, b in doc["model"]["merges"]]
    if not merges:
        raise StageError("the tokenizer has no merges (bytes only); llama.cpp refuses such a BPE")
    return GGUFVocab(pre, tokens, types, merges)
