"""Benchmark decontamination: GPT-3's 13-gram overlap, every benchmark format, both modes."""

from __future__ import annotations

import csv
import gzip
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.config import CurateSettings
from scratchlm.data.benchmarks import load_benchmark
from scratchlm.data.curate import curate, iter_curated
from scratchlm.data.ngrams import NGramIndex, normalize_words, word_spans
from scratchlm.errors import StageError

# 18 words that no filler text uses: an item, and documents with some of it planted
ITEM = (
    "Which gas do green plants take in from the air to build sugars during photosynthesis "
    "in bright sunlight"
)
FILLER = "lorem quidem sit amet vero eos et accusamus iusto odio dignissimos ducimus blanditiis "


def filler(words: int, seed: int = 0) -> str:
    base = FILLER.split()
    return " ".join(base[(i * 7 + seed) % len(base)] + str(i % 3) for i in range(words))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def corpus(tmp_path: Path, texts: list[str]) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])


def run(tmp_path: Path, src: Path, against: list[str], name: str = "out", **kw) -> dict:
    steps = ["normalize", "decontaminate"]
    s = CurateSettings(sources=[str(src)], steps=steps, decontaminate_against=against, min_words=1, **kw)  # fmt: skip
    return curate(s, tmp_path / name, progress=False)


# --------------------------------------------------------------------------- words


def reference_words(text: str) -> list[str]:
    """The definition, written the slow obvious way: lowercase, accents split off (NFKD), every
    character but letters, digits and whitespace deleted, split on whitespace."""
    chars = unicodedata.normalize("NFKD", text.lower()).lower()
    return "".join(" " if c.isspace() else c if c.isalnum() else "" for c in chars).split()


def test_normalisation_drops_case_punctuation_accents_and_spacing():
    assert normalize_words("Don't STOP—believing!!  (Really.)") == ["dont", "stopbelieving", "really"]  # fmt: skip
    assert normalize_words("“Curly” quotes… and €5 © 2024") == [
        "curly",
        "quotes",
        "and",
        "5",
        "2024",
    ]
    assert normalize_words("tabs\tnew\nlines\u00a0nbsp\x1cfs\u2003em") == ["tabs", "new", "lines", "nbsp", "fs", "em"]  # fmt: skip
    assert normalize_words("Café ÉCOLE naïve") == normalize_words("Cafe\u0301 ECOLE naive") == ["cafe", "ecole", "naive"]  # fmt: skip
    assert normalize_words("snake_case a+b=c ﬁne ＡＢＣ") == ["snakecase", "abc", "fine", "abc"]
    assert normalize_words(" -- ... !! \x00\x7f ") == []


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_fast_normalisation_equals_the_definition_and_its_spans(text):
    words = normalize_words(text)
    assert words == reference_words(text)
    spans = word_spans(text)
    assert len(spans) == len(words)
    assert all(w in normalize_words(text[a:b]) for w, (a, b) in zip(words, spans, strict=True))


def test_words_are_hashed_as_their_bytes_say():
    from scratchlm.data.ngrams import hash_words

    w = hash_words(["the cat sat", "", "on the mat, the cat!"])
    assert w.all_words() == ["the", "cat", "sat", "on", "the", "mat", "the", "cat"]
    assert w.text_of.tolist() == [0, 0, 0, 2, 2, 2, 2, 2] and w.first.tolist() == [0, 3, 3]
    h = w.hashes.tolist()
    assert h[0] == h[4] == h[6] and h[1] == h[7] and len(set(h)) == 5  # same word, same hash
    assert hash_words(["cat"]).hashes[0] == w.hashes[1]  # wherever the word is


# --------------------------------------------------------------------------- the threshold


def test_a_planted_item_is_found_at_13_words_and_not_below(tmp_path):
    words = ITEM.split()
    thirteen = " ".join(words[3:16])
    twelve = " ".join(words[3:15])
    docs = [
        filler(80) + " " + thirteen.upper().replace(" ", ",  ") + ". " + filler(40, 1),
        filler(80, 2) + " " + twelve + " " + filler(40, 3),
        filler(120, 4),
    ]
    bench = write_jsonl(tmp_path / "b.jsonl", [{"context": ITEM, "choices": ["CO2", "O2"], "answer": 0}])  # fmt: skip
    report = run(tmp_path, corpus(tmp_path, docs), [str(bench)])
    src = tmp_path / "docs.jsonl"
    assert [d["id"] for d in iter_curated(tmp_path / "out")] == [f"{src}#2", f"{src}#3"]
    d = report["decontamination"]["benchmarks"][str(bench)]
    assert (d["items"], d["documents"], d["items_touched"], d["items_too_short"]) == (1, 1, 1, 0)
    example = d["examples"][0]
    assert example["id"] == f"{src}#1" and example["ngram"] == thirteen.lower()
    assert example["item"] == ITEM + " CO2" and example["item_position"] == "1"
    assert report["dropped"]["contaminated"]["examples"][0]["benchmark"] == str(bench)
    # n is a setting: at 12 words the second document is contaminated too
    report = run(tmp_path, src, [str(bench)], "out12", decontaminate_ngram=12)
    assert report["documents_out"] == 1
    assert report["decontamination"]["benchmarks"][str(bench)]["documents"] == 2


def test_nothing_is_dropped_or_changed_when_nothing_overlaps(tmp_path):
    from pydoc_data.topics import topics

    docs = [filler(60, k) for k in range(10)] + list(topics.values())[:20]
    src = corpus(tmp_path, docs)
    other = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate"
    bench = write_jsonl(tmp_path / "b.jsonl", [{"text": ITEM}, {"text": other}])
    report = run(tmp_path, src, [str(bench)])
    plain = curate(CurateSettings(sources=[str(src)], steps=["normalize"], min_words=1), tmp_path / "plain", progress=False)  # fmt: skip
    assert report["documents_out"] == plain["documents_out"] == 30 and not report["dropped"]
    assert list(iter_curated(tmp_path / "out")) == list(iter_curated(tmp_path / "plain"))
    assert report["decontamination"]["benchmarks"][str(bench)]["documents"] == 0


def test_short_items_are_counted_as_too_short_to_check(tmp_path):
    bench = write_jsonl(
        tmp_path / "b.jsonl", [{"text": "five words are too short"}, {"text": ITEM}]
    )
    index = NGramIndex([load_benchmark(str(bench))], 13)
    assert index.too_short == [1] and index.ngrams == len(ITEM.split()) - 13 + 1
    assert index.scan(["five words are too short, indeed"]) == [[]]


def test_a_collision_of_keys_is_not_a_match(monkeypatch):
    # Multipliers of 0 give every n-gram the same key: only the word-by-word check decides.
    import numpy as np

    from scratchlm.data import ngrams
    from scratchlm.data.benchmarks import Benchmark

    monkeypatch.setattr(ngrams, "_multipliers", lambda n: np.zeros(n, np.uint64))
    index = NGramIndex([Benchmark("b", [ITEM])], 13)
    other = "plants take in from the air to build sugars during photosynthesis in dim light"
    found_other, found_item = index.scan([other, "So: " + ITEM])
    assert found_other == []
    assert [(m.item, m.word) for m in found_item] == [(0, k + 1) for k in range(6)]


# --------------------------------------------------------------------------- remove_spans


def test_remove_spans_cuts_the_shared_text_and_a_window_around_it(tmp_path):
    before, after = filler(200), filler(200, 5)
    doc = before + " " + ITEM + " " + after
    bench = write_jsonl(tmp_path / "b.jsonl", [{"text": ITEM}])
    report = run(tmp_path, corpus(tmp_path, [doc]), [str(bench)], decontaminate_mode="remove_spans")  # fmt: skip
    (kept,) = [d["text"] for d in iter_curated(tmp_path / "out")]
    assert "photosynthesis" not in kept and not set(normalize_words(ITEM)) <= set(normalize_words(kept))  # fmt: skip
    head, tail = kept.split("\n\n")
    assert before.startswith(head) and after.endswith(tail)  # whole words on both sides
    assert len(before) - len(head) >= 200 and len(after) - len(tail) >= 200  # the window
    d = report["decontamination"]
    assert (d["cut"], d["dropped"]) == (1, 0) and d["chars_removed"] == len(doc) - len(kept)


def test_remove_spans_drops_short_pieces_and_documents_in_too_many_pieces(tmp_path):
    bench = write_jsonl(tmp_path / "b.jsonl", [{"text": ITEM}])
    short = filler(10) + " " + ITEM + " " + filler(10, 1)  # both pieces under the window
    many = " ".join([ITEM + " " + filler(120, k) for k in range(4)])  # 4 pieces left
    src = corpus(tmp_path, [short, many, filler(100, 9)])
    report = run(tmp_path, src, [str(bench)], name="o1", decontaminate_mode="remove_spans")
    assert report["documents_out"] == 2 and report["dropped"]["contaminated_nothing_left"]["count"] == 1  # fmt: skip
    assert len(next(iter_curated(tmp_path / "o1"))["text"].split("\n\n")) == 4
    report = run(tmp_path, src, [str(bench)], name="o2", decontaminate_mode="remove_spans", decontaminate_max_pieces=3)  # fmt: skip
    assert report["documents_out"] == 1 and report["dropped"]["contaminated_too_many_pieces"]["count"] == 1  # fmt: skip


# --------------------------------------------------------------------------- formats

GOLD = "carbon dioxide from the surrounding air"


def format_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """spec -> (the item's own text, where it was written), one file per supported format."""
    q = ITEM
    files: dict[str, tuple[str, str]] = {}

    def jsonl(name: str, records: list, expect: str) -> None:
        write_jsonl(tmp_path / name, records)
        files[str(tmp_path / name)] = (expect, name)

    jsonl("plain.jsonl", [{"text": q}], q)
    jsonl("gsm8k.jsonl", [{"question": q, "answer": "forty two"}], f"{q} forty two")
    jsonl("hellaswag.jsonl", [{"ctx_a": q, "ctx_b": "and then", "activity_label": "Biology",
                               "endings": ["no", GOLD], "label": 1}], f"{q} and then {GOLD}")  # fmt: skip
    jsonl("arc.jsonl", [{"question": {"stem": q, "choices": [{"text": "x", "label": "A"}, {"text": GOLD, "label": "B"}]}, "answerKey": "B"}], f"{q} {GOLD}")  # fmt: skip
    jsonl("arc-hf.jsonl", [{"question": q, "choices": {"text": ["x", GOLD], "label": ["1", "2"]}, "answerKey": "2"}], f"{q} {GOLD}")  # fmt: skip
    jsonl("mmlu.jsonl", [{"question": q, "choices": ["x", "y", GOLD, "z"], "answer": 2}], f"{q} {GOLD}")  # fmt: skip
    jsonl("mc.jsonl", [{"context": q, "choices": [GOLD, "x"], "answer": 0}], f"{q} {GOLD}")
    write_jsonl(tmp_path / "piqa.jsonl", [{"goal": q, "sol1": "x", "sol2": GOLD}])
    (tmp_path / "piqa-labels.lst").write_text("1\n")  # PIQA's answers live beside its items
    files[str(tmp_path / "piqa.jsonl")] = (f"{q} {GOLD}", "piqa.jsonl")
    with open(tmp_path / "mmlu.csv", "w", newline="") as f:
        csv.writer(f).writerow([q, "x", GOLD, "y", "z", "B"])
    files[str(tmp_path / "mmlu.csv")] = (f"{q} {GOLD}", "mmlu.csv")
    with gzip.open(tmp_path / "gz.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": q}) + "\n")
    files[str(tmp_path / "gz.jsonl.gz")] = (q, "gz")
    (tmp_path / "held.txt").write_text(q)
    files[str(tmp_path / "held.txt")] = (q, "txt")
    files["mc:" + str(tmp_path / "mc.jsonl")] = (f"{q} {GOLD}", "forced")
    return files


def test_every_benchmark_format_gives_the_items_own_words(tmp_path):
    for spec, (expect, _) in format_files(tmp_path).items():
        bench = load_benchmark(spec)
        assert bench.texts == [expect], spec
        assert bench.skipped == [] and bench.positions == [1]


def test_hf_datasets_saved_to_disk_and_parquet_files_are_benchmarks(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": ITEM, "choices": ["x", GOLD], "answer": 1, "subject": "biology"},
            {"question": "what?", "choices": ["a"], "answer": 5, "subject": "none"}]  # fmt: skip
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "mmlu_hf")  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu.parquet")
    for spec in (f"hf:{tmp_path / 'mmlu_hf'}", str(tmp_path / "mmlu_hf"), str(tmp_path / "mmlu.parquet")):  # fmt: skip
        bench = load_benchmark(spec)
        assert bench.texts == [f"{ITEM} {GOLD}"] and bench.skipped == [2], spec
    doc = filler(50) + " " + ITEM + " " + GOLD + " " + filler(50, 1)
    report = run(tmp_path, corpus(tmp_path, [doc, filler(90, 2)]), [f"hf:{tmp_path / 'mmlu_hf'}"])
    assert report["documents_out"] == 1


def test_a_glob_is_one_benchmark_per_file(tmp_path):
    from scratchlm.data.benchmarks import expand_specs

    for subject in ("astronomy", "biology"):
        with open(tmp_path / f"{subject}_test.csv", "w", newline="") as f:
            csv.writer(f).writerow([f"{subject}: {ITEM}", "x", GOLD, "y", "z", "B"])
    specs = expand_specs([f"mmlu:{tmp_path}/*_test.csv", str(tmp_path / "biology_test.csv")])
    assert specs == [f"mmlu:{tmp_path}/astronomy_test.csv", f"mmlu:{tmp_path}/biology_test.csv", str(tmp_path / "biology_test.csv")]  # fmt: skip
    doc = filler(40) + " biology " + ITEM + " " + GOLD
    report = run(tmp_path, corpus(tmp_path, [doc, filler(80, 3)]), [f"mmlu:{tmp_path}/*_test.csv"])
    touched = {k: b["documents"] for k, b in report["decontamination"]["benchmarks"].items()}
    assert touched == {specs[0]: 1, specs[1]: 1}  # the shared words are in both items


def test_a_document_from_each_format_is_found_and_named(tmp_path):
    files = format_files(tmp_path)
    docs = [filler(40, k) + " " + expect + " " + filler(40, k + 1) for k, (expect, _) in enumerate(files.values())]  # fmt: skip
    report = run(tmp_path, corpus(tmp_path, docs + [filler(100, 50)]), list(files))
    assert report["documents_out"] == 1
    for spec in files:
        assert report["decontamination"]["benchmarks"][spec]["items_touched"] == 1, spec


def test_bad_benchmarks_are_errors_before_any_work_and_bad_lines_are_counted(tmp_path):
    src = corpus(tmp_path, [filler(50)])
    with pytest.raises(StageError, match="missing.jsonl: no such file"):
        run(tmp_path, src, [str(tmp_path / "missing.jsonl")])
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{broken\n\n")
    with pytest.raises(StageError, match="empty.jsonl: no item in it"):
        run(tmp_path, src, [str(empty)])
    with pytest.raises(StageError, match="nothing to check against"):
        run(tmp_path, src, [])
    with pytest.raises(StageError, match="nothing-\\*.csv: the glob matches no file"):
        run(tmp_path, src, [str(tmp_path / "nothing-*.csv")])
    some = write_jsonl(tmp_path / "some.jsonl", [{"text": ITEM}, 7, {"other": 3}])
    bench = load_benchmark(str(some))
    assert bench.skipped == [2, 3] and len(bench.texts) == 1
