from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.config import TokenizerSettings
from scratchlm.tokenizer.bpe import PATTERNS, count_pretokens, encode_chunk, train_bpe
from scratchlm.tokenizer.tokenizer import ENDOFTEXT, BPETokenizer, load_tokenizer
from scratchlm.tokenizer.train import train_tokenizer


def test_worked_example_with_a_tie():
    # aaabdaaabac: aa (4) first; then (aa,a) and (a,b) tie at 2 and ("aa","a") > ("a","b").
    merges = train_bpe({b"aaabdaaabac": 1}, 3)
    assert merges == [(97, 97), (256, 97), (257, 98)]


def test_tie_goes_to_the_greater_byte_pair():
    # "ab" and "cd" both occur twice: ("c","d") > ("a","b") wins the tie.
    assert train_bpe({b"ab": 2, b"cd": 2}, 1) == [(99, 100)]
    # A prefix sorts before its extension: ("b", "c") < ("bb", "a")... counts decide first.
    assert train_bpe({b"ab": 3, b"cd": 2}, 1) == [(97, 98)]


def test_counts_weight_words():
    merges = train_bpe({b"xy": 5, b"yz": 4}, 1)
    assert merges == [(ord("x"), ord("y"))]


def test_stops_when_nothing_is_left_to_merge():
    assert len(train_bpe({b"abc": 1}, 10)) == 2


@pytest.fixture(scope="module")
def pydoc_tokenizer() -> BPETokenizer:
    from pydoc_data.topics import topics

    texts = list(topics.values())[:40]
    return train_tokenizer(texts, TokenizerSettings(vocab_size=600), progress=False)


def test_vocab_size_and_unique_tokens(pydoc_tokenizer):
    tok = pydoc_tokenizer
    assert tok.vocab_size == 600
    assert len(set(tok.vocab)) == len(tok.vocab)  # no two ids spell the same bytes


def test_special_tokens_never_come_from_ordinary_text(pydoc_tokenizer):
    tok = pydoc_tokenizer
    text = f"end{ENDOFTEXT}start"
    assert tok.eot_id not in tok.encode(text)
    assert tok.eot_id in tok.encode(text, allow_special=True)
    assert tok.decode(tok.encode(text)) == text


def test_save_and_load_give_the_same_ids(pydoc_tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    pydoc_tokenizer.save(path)
    again = load_tokenizer(path)
    text = "def f(x):\n    return x ** 2  # squares"
    assert again.encode(text) == pydoc_tokenizer.encode(text)
    assert again.fingerprint() == pydoc_tokenizer.fingerprint()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.sampled_from(["  \n\n\t x", "don't  stop", "😀👍🏽 naïve", "123456 7.5", "a\r\nb"])
)
def test_fast_path_equals_reference_and_round_trips(pydoc_tokenizer, text):
    ids = pydoc_tokenizer.encode(text)
    assert ids == pydoc_tokenizer.encode_reference(text)
    assert pydoc_tokenizer.decode(ids) == text
    with_specials = text + ENDOFTEXT + text + "<|assistant|>"
    ids = pydoc_tokenizer.encode(with_specials, allow_special=True)
    assert ids == pydoc_tokenizer.encode_reference(with_specials, allow_special=True)
    assert ids.count(pydoc_tokenizer.eot_id) == 1
    assert pydoc_tokenizer.decode(ids) == with_specials


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 599), max_size=30))
def test_decoding_any_ids_never_fails(pydoc_tokenizer, ids):
    # Token boundaries can split a UTF-8 character: bytes are exact, text uses U+FFFD there.
    raw = pydoc_tokenizer.decode_bytes(ids)
    assert raw == b"".join(
        pydoc_tokenizer.vocab.get(i) or _special_bytes(pydoc_tokenizer, i) for i in ids
    )
    assert pydoc_tokenizer.decode(ids) == raw.decode("utf-8", errors="replace")


def _special_bytes(tok, i: int) -> bytes:
    return next(s for s, j in tok.special_tokens.items() if j == i).encode()


def test_trained_merges_compress_their_own_words(pydoc_tokenizer):
    counts = count_pretokens(["the the the function"], PATTERNS["gpt4"])
    assert counts == Counter({b"the": 1, b" the": 2, b" function": 1})
    assert len(encode_chunk(b" the", pydoc_tokenizer.ranks)) == 1


def test_vocab_too_small_for_specials_is_an_error():
    from scratchlm.errors import StageError

    with pytest.raises(StageError, match="no room"):
        train_tokenizer(
            ["abc"],
            TokenizerSettings(vocab_size=258, special_tokens=[ENDOFTEXT, "<b>", "<c>"]),
            progress=False,
        )


def test_char_level_mode(tmp_path):
    tok = train_tokenizer(
        ["hello world", "held"],
        TokenizerSettings(kind="char", special_tokens=[ENDOFTEXT]),
        progress=False,
    )
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 9 and tok.eot_id == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("world held", allow_special=True)) == "world held"
    assert tok.encode(f"he{ENDOFTEXT}", allow_special=True) == [3, 2, 8]
    from scratchlm.errors import StageError

    with pytest.raises(StageError, match="'z' is not in this character-level vocabulary"):
        tok.encode("zoo")
    tok.save(tmp_path / "char.json")
    again = load_tokenizer(tmp_path / "char.json")
    assert again.encode("hello world") == tok.encode("hello world") and again.eot_id == 8


def test_char_level_shards(tmp_path):
    import numpy as np

    from scratchlm.config import TokenizeSettings
    from scratchlm.tokenizer.shards import tokenize_corpus

    texts = ["abc", "cab", "bca", "aaa"]
    tok = train_tokenizer(texts, TokenizerSettings(kind="char"), progress=False)
    meta = tokenize_corpus(texts, tok, TokenizeSettings(val_fraction=0.0), tmp_path, progress=False)
    ids = np.fromfile(tmp_path / meta["files"]["train"][0], dtype=meta["dtype"])
    assert tok.decode(ids.tolist()).split(ENDOFTEXT)[:-1] == texts


def test_parallel_counting_equals_serial():
    from pydoc_data.topics import topics

    texts = list(topics.values())
    serial = count_pretokens(texts, "gpt4", workers=1, chunk_chars=50_000)
    parallel = count_pretokens(texts, "gpt4", workers=2, chunk_chars=50_000)
    assert serial == parallel and sum(serial.values()) > 50_000


def test_cli_trains_on_files(tmp_path):
    from pydoc_data.topics import topics

    from scratchlm.cli import main

    (tmp_path / "docs").mkdir()
    for i, text in enumerate(list(topics.values())[:10]):
        (tmp_path / "docs" / f"{i}.md").write_text(text)
    args = [
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "docs"),
        "--out",
        str(tmp_path / "tok"),
        "-q",
    ]
    assert main([*args, "--set", "tokenizer.vocab_size=400"]) == 0
    tok = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    assert tok.vocab_size == 400 and len(tok.merges) == 400 - 256 - 8


# --------------------------------------------------------------------------- overlapping specials


def longest_match_ids(tok: BPETokenizer, text: str) -> list[int]:
    """The rule, written plainly: at each position the longest special token that starts
    there is one token; the text between special tokens is ordinary text."""
    ids, plain, i = [], "", 0
    while i < len(text):
        match = max((s for s in tok.special_tokens if text.startswith(s, i)), key=len, default="")
        if match:
            ids += tok.encode(plain) + [tok.special_tokens[match]]
            plain, i = "", i + len(match)
        else:
            plain, i = plain + text[i], i + 1
    return ids + tok.encode(plain)


BYTE_TOKENIZER_VOCAB = [bytes([i]) for i in range(256)]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    specials=st.lists(
        st.text("ab<|>", min_size=1, max_size=6), min_size=1, max_size=5, unique=True
    ),
    text=st.text("ab<|>c", max_size=40),
)
def test_overlapping_special_tokens_take_the_longest_match(specials, text):
    tok = BPETokenizer(BYTE_TOKENIZER_VOCAB, "gpt2", specials)
    expected = longest_match_ids(tok, text)
    assert tok.encode(text, allow_special=True) == expected
    assert tok.encode_reference(text, allow_special=True) == expected
    assert tok.decode(expected) == text


def test_a_special_token_that_starts_another():
    tok = BPETokenizer(BYTE_TOKENIZER_VOCAB, "gpt2", ["<|a|>", "<|a|><|a|>"])
    a, aa = tok.special_tokens["<|a|>"], tok.special_tokens["<|a|><|a|>"]
    for encode in (tok.encode, tok.encode_reference):
        assert encode("<|a|><|a|><|a|>", allow_special=True) == [aa, a]


def test_training_learns_no_merge_from_special_token_strings():
    # "<|" and "|>" occur only inside <|endoftext|>: a trainer that reads the special token as
    # text learns merges such as "<|" and "endoftext" from it.
    text = " ".join(f"word{i % 7} and more{ENDOFTEXT}" for i in range(400))
    tok = train_tokenizer([text], TokenizerSettings(vocab_size=320), progress=False)
    learned = [tok.vocab[i] for i in range(256, 256 + len(tok.merges))]
    assert learned and not [t for t in learned if b"<|" in t or b"|>" in t or b"endof" in t]
    assert tok.encode(f"x{ENDOFTEXT}y", allow_special=True).count(tok.eot_id) == 1
