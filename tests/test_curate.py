from __future__ import annotations

import gzip
import json

import pytest

from scratchlm.config import CurateSettings
from scratchlm.data.clean import normalize
from scratchlm.data.curate import curate, iter_curated
from scratchlm.errors import StageError


def words(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def test_normalize():
    assert normalize("Cafe\u0301  \r\nline two\t\r\n\n\n\n\nend  ") == "Café\nline two\n\nend"


def test_min_words_threshold_is_inclusive(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": words(n, f"w{n}_")}) for n in (4, 5, 6)) + "\n")
    report = curate(
        CurateSettings(sources=[str(src)], min_words=5), tmp_path / "out", progress=False
    )
    kept = [len(d["text"].split()) for d in iter_curated(tmp_path / "out")]
    assert kept == [5, 6]
    dropped = report["dropped"]["too_few_words"]
    assert dropped["count"] == 1 and dropped["examples"][0]["id"] == f"{src}#1"
    assert dropped["examples"][0]["text"] == words(4, "w4_")  # the example shows the text


def test_exact_duplicates_after_normalisation_are_dropped(tmp_path):
    src = tmp_path / "docs.jsonl"
    a = words(10)
    src.write_text(
        "\n".join(json.dumps({"text": t}) for t in (a, a + "   \n\n\n", words(10, "x"))) + "\n"
    )
    report = curate(
        CurateSettings(sources=[str(src)], min_words=1), tmp_path / "out", progress=False
    )
    assert report["documents_out"] == 2
    assert [e["id"] for e in report["dropped"]["exact_duplicate"]["examples"]] == [f"{src}#2"]
    report = curate(
        CurateSettings(sources=[str(src)], min_words=1, steps=["normalize", "length"]),
        tmp_path / "out2",
        progress=False,
    )
    assert report["documents_out"] == 3


def test_bad_records_are_counted_not_fatal(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        json.dumps({"text": words(8)})
        + "\n{not json\n"
        + json.dumps({"body": "x"})
        + "\n"
        + json.dumps({"text": 3})
        + "\n"
    )
    (folder / "b.txt").write_bytes(b"caf\xe9 " + words(8).encode())
    (folder / "c.txt").write_bytes(b"\x00\x01binary")
    (folder / "d.jsonl.gz").write_bytes(
        gzip.compress((json.dumps({"text": words(9, "g")}) + "\n").encode())
    )
    (folder / "e.txt").write_text("   \n")
    report = curate(
        CurateSettings(sources=[str(folder)], min_words=3), tmp_path / "out", progress=False
    )
    assert counts(report) == {
        "malformed_json_line": 1,
        "missing_text_field": 2,
        "invalid_utf8_repaired": 1,
        "binary_file": 1,
    }
    bad = report["bad_input"]
    assert bad["malformed_json_line"]["where"] == [f"{folder / 'a.jsonl'}:2"]
    assert bad["missing_text_field"]["where"] == [f"{folder / 'a.jsonl'}:{n}" for n in (3, 4)]
    assert bad["invalid_utf8_repaired"]["where"] == [f"{folder / 'b.txt'}:byte 3"]
    assert report["documents_out"] == 3
    assert report["dropped"]["empty"]["count"] == 1
    docs = list(iter_curated(tmp_path / "out"))
    assert docs[0]["id"] == f"{folder / 'a.jsonl'}#1" and docs[0]["meta"]["position"] == 1
    assert "\ufffd" in docs[1]["text"]


def counts(report: dict) -> dict[str, int]:
    return {kind: b["count"] for kind, b in report["bad_input"].items()}


def test_max_docs(tmp_path):
    report = curate(
        CurateSettings(sources=["builtin:pydoc"], min_words=0, max_docs=7),
        tmp_path / "out",
        progress=False,
    )
    assert report["documents_in"] == 7


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        curate(
            CurateSettings(sources=[str(tmp_path / "nope.txt")]), tmp_path / "out", progress=False
        )
    with pytest.raises(StageError, match="matches no file"):
        curate(
            CurateSettings(sources=[str(tmp_path / "*.jsonl")]), tmp_path / "out", progress=False
        )
    with pytest.raises(StageError, match="unknown builtin corpus"):
        curate(CurateSettings(sources=["builtin:nope"]), tmp_path / "out", progress=False)


def test_nothing_surviving_is_an_error_with_reasons(tmp_path):
    src = tmp_path / "short.txt"
    src.write_text("too short")
    with pytest.raises(StageError, match="no document survived out of 1 .*too_few_words: 1"):
        curate(CurateSettings(sources=[str(src)], min_words=50), tmp_path / "out", progress=False)


def test_shards_split_at_shard_docs(tmp_path):
    report = curate(
        CurateSettings(sources=["builtin:pydoc"], max_docs=25, min_words=0, shard_docs=10),
        tmp_path / "out",
        progress=False,
    )
    names = [s["file"] for s in report["shards"]]
    assert names == ["docs_00000.jsonl.zst", "docs_00001.jsonl.zst", "docs_00002.jsonl.zst"]
    assert [s["documents"] for s in report["shards"]] == [10, 10, report["documents_out"] - 20]
    assert len(list(iter_curated(tmp_path / "out"))) == report["documents_out"]


def test_lone_surrogates_and_a_truncated_gzip_are_counted(tmp_path):
    good = "\n".join(json.dumps({"text": words(8, f"d{i}_")}) for i in range(50)) + "\n"
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(good.encode())[:-30])  # cut short
    (tmp_path / "bad.jsonl").write_text('{"text": "one two three four \\ud800 five six seven"}\n')
    report = curate(
        CurateSettings(sources=[str(tmp_path)], min_words=3), tmp_path / "out", progress=False
    )
    assert counts(report) == {"invalid_unicode": 1, "truncated_file": 1}
    assert 0 < report["documents_out"] <= 50  # what was read before the cut is kept
