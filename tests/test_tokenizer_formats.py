"""Interchange: what we export, HF `tokenizers` / `transformers` / tiktoken read with the same ids,
and what they write, we import and encode exactly as they do."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.cli import main
from scratchlm.config import TokenizerSettings
from scratchlm.errors import StageError
from scratchlm.tokenizer.formats import export_tokenizer, import_tiktoken, import_tokenizer
from scratchlm.tokenizer.tokenizer import ENDOFTEXT, load_tokenizer
from scratchlm.tokenizer.train import train_tokenizer

TRICKY = [
    "  \n\n\t x",
    "don't  STOP",
    "😀👍🏽 naïve café",
    "123456 7.5e-3",
    "a\r\nb\n",
    "   ",
    "",
    "ĠĊ <|not special|>",
]


def pydoc_texts(start: int, stop: int) -> list[str]:
    from pydoc_data.topics import topics

    return list(topics.values())[start:stop]


@pytest.fixture(scope="module")
def ours():
    return train_tokenizer(pydoc_texts(0, 40), TokenizerSettings(vocab_size=800), progress=False)


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_tokenizer(ours, out)
    return out


def held_out() -> list[str]:
    return pydoc_texts(40, 60) + TRICKY


def test_hf_tokenizers_reads_our_export_with_the_same_ids(ours, exported):
    hf = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    for text in held_out():
        assert hf.encode(text, add_special_tokens=False).ids == ours.encode(text)
    assert hf.decode(ours.encode("Hello there"), skip_special_tokens=False) == "Hello there"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
        | st.sampled_from([ENDOFTEXT, "<|user|>", "<|end"]),
        max_size=4,
    ).map("".join)
)
def test_hf_tokenizers_agrees_on_arbitrary_text(ours, exported, text):
    # HF always reads special-token strings as special tokens: compare with allow_special.
    hf = _hf_cache(exported)
    assert hf.encode(text, add_special_tokens=False).ids == ours.encode(text, allow_special=True)


_CACHE: dict[Path, tokenizers.Tokenizer] = {}


def _hf_cache(path: Path) -> tokenizers.Tokenizer:
    if path not in _CACHE:
        _CACHE[path] = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    return _CACHE[path]


def test_autotokenizer_loads_the_export_with_special_tokens(ours, exported):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(exported))
    text = f"first document{ENDOFTEXT}second <|user|> turn"
    ids = ours.encode(text, allow_special=True)
    assert hf(text)["input_ids"] == ids
    assert ours.eot_id in ids and ours.special_tokens["<|user|>"] in ids
    assert hf.decode(ids) == text
    assert hf.eos_token == ENDOFTEXT


def test_gpt2_style_vocab_and_merges_match_with_the_gpt2_pattern(tmp_path):
    from transformers import GPT2TokenizerFast

    ours = train_tokenizer(
        pydoc_texts(0, 40), TokenizerSettings(vocab_size=700, pattern="gpt2"), progress=False
    )
    export_tokenizer(ours, tmp_path)
    pair = _folder_with(tmp_path, "vocab.json", "merges.txt")
    hf = GPT2TokenizerFast.from_pretrained(str(pair))  # reads exactly vocab.json + merges.txt
    for text in held_out():
        assert hf(text)["input_ids"] == ours.encode(text)
    back = import_tokenizer(pair)
    assert all(back.encode(t) == ours.encode(t) for t in held_out())


def _folder_with(src: Path, *names: str) -> Path:
    dst = src / "only"
    dst.mkdir()
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def test_tiktoken_ranks_round_trip(ours, exported):
    back = import_tiktoken(exported / "tokenizer.tiktoken", ours.pattern, list(ours.special_tokens))
    for text in held_out():
        assert back.encode(text) == ours.encode(text)
    assert back.special_tokens == ours.special_tokens


def test_hf_tokenizer_json_round_trips_to_ours(ours, exported, tmp_path):
    back = import_tokenizer(exported)  # the folder's tokenizer.json
    assert back.special_tokens == ours.special_tokens
    for text in held_out():
        assert back.encode(text) == ours.encode(text)
    back.save(tmp_path / "t.json")  # an imported vocabulary saves as tokens, and reloads
    assert load_tokenizer(tmp_path / "t.json").encode(held_out()[0]) == ours.encode(held_out()[0])


def test_import_a_tokenizer_trained_by_hf(tmp_path):
    from tokenizers import Regex, models, pre_tokenizers, trainers

    from scratchlm.tokenizer.bpe import PATTERNS

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERNS["gpt4"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(pydoc_texts(0, 40), trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = import_tokenizer(tmp_path / "tokenizer.json")
    assert ours.special_tokens == {ENDOFTEXT: 0}  # HF puts specials first; ids are kept
    for text in held_out():
        assert ours.encode(text) == hf.encode(text).ids


GPT2_FILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


@pytest.mark.skipif(
    not GPT2_FILES.is_dir(),
    reason="needs ../shared/data/gpt2 (OpenAI's GPT-2 files), present in CI",
)
def test_gpt2_files_encode_exactly_as_gpt2(tmp_path, monkeypatch):
    import tiktoken
    import tiktoken.registry

    for name, local in (("encoder.json", "encoder.json"), ("vocab.bpe", "vocab.bpe")):
        key = hashlib.sha1((TIKTOKEN_URL + name).encode()).hexdigest()
        shutil.copy(GPT2_FILES / local, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")
    ours = import_tokenizer(GPT2_FILES)
    assert ours.vocab_size == 50257 and ours.eot_id == 50256
    for text in held_out() + pydoc_texts(60, 79):
        assert ours.encode(text) == reference.encode_ordinary(text)
    assert ours.encode(f"a{ENDOFTEXT}b", allow_special=True) == reference.encode(
        f"a{ENDOFTEXT}b", allowed_special="all"
    )


def test_import_refuses_what_it_cannot_encode_exactly(tmp_path):
    from tokenizers import models

    word_level = tokenizers.Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_level.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(StageError, match="only byte-level BPE"):
        import_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(StageError, match="no such file"):
        import_tokenizer(tmp_path / "nope.tiktoken")


def test_cli_export_import_and_encode(ours, tmp_path, capsys):
    ours.save(tmp_path / "tokenizer.json")
    assert main(["tokenizer", "export", str(tmp_path), str(tmp_path / "hf")]) == 0
    assert main(["tokenizer", "import", str(tmp_path / "hf"), str(tmp_path / "back.json")]) == 0
    assert main(["tokenizer", "encode", str(tmp_path / "back.json"), "hello world"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = ours.encode("hello world")
    assert lines[-3] == f"{len(ids)} tokens for 11 bytes"
    assert lines[-2] == " ".join(map(str, ids))
    assert lines[-1].replace("|", "") == "hello world"


def test_import_refuses_hf_options_it_would_not_reproduce(ours, exported, tmp_path):
    doc = json.loads((exported / "tokenizer.json").read_text())
    for change, message in (
        ({"normalizer": {"type": "Lowercase"}}, "normalizer"),
        (
            {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}},
            "add_prefix_space",
        ),
    ):
        (tmp_path / "tokenizer.json").write_text(json.dumps(doc | change))
        with pytest.raises(StageError, match=message):
            import_tokenizer(tmp_path / "tokenizer.json")


def test_cli_train_on_files_needs_an_out_folder(tmp_path, capsys):
    assert (
        main(["tokenizer", "train", "--input", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    )
    assert main(["tokenizer", "train", "--out", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    assert "--input and --out go together" in capsys.readouterr().err
