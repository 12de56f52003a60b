from __future__ import annotations

import numpy as np
import pytest

from scratchlm.config import TokenizerSettings, TokenizeSettings
from scratchlm.tokenizer.shards import tokenize_corpus
from scratchlm.tokenizer.train import train_tokenizer


def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return list(topics.values())[:30]


@pytest.fixture(scope="module")
def tok():
    """One small BPE tokenizer of the corpus, shared by the tests that only need some tokenizer."""
    return train_tokenizer(corpus(), TokenizerSettings(vocab_size=300), progress=False)


def read_split(out, meta, split) -> np.ndarray:
    parts = [np.fromfile(out / f, dtype=meta["dtype"]) for f in meta["files"][split]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=meta["dtype"])


def test_shards_hold_every_document_followed_by_endoftext(tmp_path):
    texts = corpus()
    tok = train_tokenizer(texts, TokenizerSettings(vocab_size=400), progress=False)
    meta = tokenize_corpus(
        texts, tok, TokenizeSettings(val_fraction=0.2, seed=1), tmp_path, progress=False
    )
    assert meta["dtype"] == "uint16"
    train, val = read_split(tmp_path, meta, "train"), read_split(tmp_path, meta, "val")
    assert meta["tokens"] == {"train": len(train), "val": len(val)}
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(texts)
    assert meta["documents"]["val"] > 0
    # Each split is a concatenation of documents, each ending with exactly one <|endoftext|>.
    expected = {tuple(tok.encode(t)) + (tok.eot_id,) for t in texts}
    for split in (train, val):
        assert split[-1] == tok.eot_id
        ends = np.flatnonzero(split == tok.eot_id)
        docs = np.split(split, ends[:-1] + 1)
        assert all(tuple(d.tolist()) in expected for d in docs)
    assert len(train) + len(val) == sum(len(tok.encode(t)) + 1 for t in texts)


def test_split_is_fixed_by_seed(tmp_path, tok):
    texts = corpus()
    runs = []
    for i, seed in enumerate((7, 7, 8)):
        out = tmp_path / str(i)
        out.mkdir()
        meta = tokenize_corpus(
            texts,
            tok,
            TokenizeSettings(val_fraction=0.3, seed=seed, threads=1 + i),
            out,
            progress=False,
        )
        runs.append(read_split(out, meta, "val").tolist())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_small_shards_concatenate_to_the_whole(tmp_path, tok):
    texts = corpus()
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    one = tokenize_corpus(
        texts, tok, TokenizeSettings(val_fraction=0.0), tmp_path / "one", progress=False
    )
    many = tokenize_corpus(
        texts,
        tok,
        TokenizeSettings(val_fraction=0.0, shard_tokens=2000),
        tmp_path / "many",
        progress=False,
    )
    assert len(many["files"]["train"]) > 1
    assert all((tmp_path / "many" / f).stat().st_size <= 2000 * 2 for f in many["files"]["train"])
    assert np.array_equal(
        read_split(tmp_path / "one", one, "train"), read_split(tmp_path / "many", many, "train")
    )


def test_tiny_corpus_still_gets_a_validation_document(tmp_path, tok):
    texts = corpus()[:3]
    meta = tokenize_corpus(
        texts, tok, TokenizeSettings(val_fraction=0.01), tmp_path, progress=False
    )
    assert meta["documents"] == {"train": 2, "val": 1}


def test_dtype_follows_vocab_size():
    from scratchlm.tokenizer.shards import token_dtype

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_tail_split_holds_out_the_last_tokens(tmp_path, tok):
    texts = corpus()
    (tmp_path / "all").mkdir()
    (tmp_path / "tail").mkdir()
    whole = tokenize_corpus(
        texts, tok, TokenizeSettings(val_fraction=0.0), tmp_path / "all", progress=False
    )
    meta = tokenize_corpus(
        texts,
        tok,
        TokenizeSettings(val_fraction=0.1, split="tail", shard_tokens=1500),
        tmp_path / "tail",
        progress=False,
    )
    stream = read_split(tmp_path / "all", whole, "train")
    train, val = (
        read_split(tmp_path / "tail", meta, "train"),
        read_split(tmp_path / "tail", meta, "val"),
    )
    assert len(val) == int(len(stream) * 0.1) and meta["tokens"] == {
        "train": len(train),
        "val": len(val),
    }
    assert np.array_equal(np.concatenate([train, val]), stream)
    assert all((tmp_path / "tail" / f).stat().st_size <= 1500 * 2 for f in meta["files"]["train"])
    assert meta["documents"]["val"] == int((val == tok.eot_id).sum()) >= 1
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(texts)


def test_tail_split_too_small_for_any_token_is_an_error(tmp_path):
    from scratchlm.errors import StageError

    tok = train_tokenizer(["ab"], TokenizerSettings(kind="char"), progress=False)
    with pytest.raises(StageError, match="val_fraction"):
        tokenize_corpus(
            ["ab"], tok, TokenizeSettings(val_fraction=0.01, split="tail"), tmp_path, progress=False
        )


def test_shards_read_with_the_tokenizer_fine_tuning_extended_and_no_other(tmp_path, tok):
    from scratchlm.errors import StageError
    from scratchlm.eval.perplexity import shard_documents
    from scratchlm.tokenizer.chat import add_chat_tokens
    from scratchlm.tokenizer.shards import made_with

    texts = corpus()
    meta = tokenize_corpus(texts, tok, TokenizeSettings(val_fraction=0.2), tmp_path, progress=False)
    extended, added = add_chat_tokens(tok, tools=True)  # what SFT on tool data does
    assert added and made_with(meta, tok) and made_with(meta, extended)
    assert list(shard_documents(tmp_path, extended)) == list(shard_documents(tmp_path, tok))
    other = train_tokenizer(texts[:5], TokenizerSettings(vocab_size=300), progress=False)
    assert not made_with(meta, other) and not made_with(meta, add_chat_tokens(other, tools=True)[0])
    with pytest.raises(StageError, match="another tokenizer"):
        next(iter(shard_documents(tmp_path, other)))
