"""Curation steps: each rule at its threshold, language ID, the quality classifier, PII, dedup,
every source format, bad input, and the same output whatever the executor."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter

import pytest

from scratchlm.config import CurateSettings
from scratchlm.data import filters
from scratchlm.data.clean import normalize, strip_gutenberg
from scratchlm.data.curate import curate, iter_curated
from scratchlm.data.dedup import MinHasher, near_duplicate_clusters
from scratchlm.data.pii import mask_pii
from scratchlm.errors import SettingsError

S = CurateSettings()
SENTENCE = "The cat sat on the mat and looked at the birds with great interest."


def prose(n_words: int) -> str:
    """n words of English-like text: stop words between numbered words, no repeated 5-gram."""
    pool = ["the", "of", "and", "to", "that", "with", "have", "be"]
    return " ".join(f"item{i}" if i % 2 else pool[i // 2 % len(pool)] for i in range(n_words))


def line(i: int) -> str:
    """A sentence unlike every other line's (each 5-gram holds a numbered word)."""
    return f"Line {i} tells of item{i}a and item{i}b with the river{i} near the garden{i}."


# --------------------------------------------------------------------------- Gopher


def test_gopher_word_count_bounds_are_inclusive():
    assert filters.gopher(prose(50), S) is None
    assert filters.gopher(prose(49), S) == "gopher_short_doc"
    few = CurateSettings(gopher_max_words=60)
    assert filters.gopher(prose(60), few) is None
    assert filters.gopher(prose(61), few) == "gopher_long_doc"


def test_gopher_mean_word_length():
    short = " ".join(["ab"] * 98 + ["the", "with"])
    assert filters.gopher(short, S) == "gopher_short_words"
    long_words = " ".join(["extraordinarily"] * 98 + ["the", "with"])
    assert filters.gopher(long_words, S) == "gopher_long_words"


@pytest.mark.parametrize("symbol", ["#", "..."])
def test_gopher_symbol_to_word_ratio_fires_above_a_tenth(symbol):
    body = prose(100)
    # each mark is a word of its own too: the ratio is marks / all words
    assert filters.gopher((symbol + " ") * 10 + body, S) is None  # 10 / 110
    reason = "gopher_too_many_hashes" if symbol == "#" else "gopher_too_many_ellipses"
    assert filters.gopher((symbol + " ") * 12 + body, S) == reason  # 12 / 112


def test_gopher_bullets_ellipsis_lines_alpha_and_stop_words():
    lines = [f"- {prose(10)}" for _ in range(9)] + [prose(10)]
    assert filters.gopher("\n".join(lines), S) is None  # 90%: not above
    assert filters.gopher("\n".join(lines[:9] + [f"• {prose(10)}"]), S) == "gopher_too_many_bullets"
    ell = [prose(12) + " ..." for _ in range(3)] + [prose(12) for _ in range(7)]
    assert filters.gopher("\n".join(ell), S) is None  # 30%
    ell[3] += " ..."
    assert filters.gopher("\n".join(ell), S) == "gopher_too_many_end_ellipses"
    numbers = prose(60) + " " + " ".join(["1234"] * 16)  # 16 / 76 non-alpha: 79% alpha
    assert filters.gopher(numbers, S) == "gopher_too_few_alpha_words"
    no_stop = " ".join(f"river{i} garden{i}" for i in range(30))
    assert filters.gopher(no_stop + " the", S) == "gopher_too_few_stop_words"
    assert filters.gopher(no_stop + " the with", S) is None


# --------------------------------------------------------------------------- repetition


def test_repetition_duplicate_lines_and_paragraphs():
    unique = [line(i) for i in range(10)]
    assert filters.repetition("\n".join(unique), S) is None
    repeated = unique[:6] + [unique[0]] * 4  # 4 of 10 lines repeat: > 0.3
    reason = filters.repetition("\n".join(repeated), S)
    assert reason in {"dup_line_frac", "dup_line_char_frac"}
    paragraphs = "\n\n".join(unique[:6] + [unique[1]] * 3)
    assert filters.repetition(paragraphs, S) in {"dup_para_frac", "dup_para_char_frac"}


def test_repetition_top_and_duplicated_ngrams():
    assert filters.repetition(prose(300), S) is None
    spam = prose(200) + " " + " ".join(["buy now"] * 60)
    assert filters.repetition(spam, S) == "top_2_gram"
    looped = " ".join([prose(40)] * 3)  # one 40-word passage three times, no newline
    assert filters.repetition(looped, S).startswith(("top_", "duplicated_"))


# --------------------------------------------------------------------------- C4


def test_c4_line_rules_and_document_rules():
    good = [f"This is sentence {i} of a good page. It ends well." for i in range(3)]
    text = "\n".join(
        good
        + [
            "Menu Home About",  # no terminal punctuation: removed
            "This site uses cookies to work.",  # policy: removed
            "Please enable JavaScript to continue.",  # javascript: removed
            "Two words.",  # too few words: removed
            "A cited claim.[1] And [edit] more text here.",  # citations stripped, kept
        ]
    )
    kept, reason = filters.c4(text, S)
    assert reason is None
    assert kept.splitlines() == good + ["A cited claim. And  more text here."]
    assert filters.c4(text + "\nLorem ipsum dolor sit amet.", S)[1] == "c4_lorem_ipsum"
    assert filters.c4(text + "\nThe code is { return x; }.", S)[1] == "c4_curly_bracket"
    assert filters.c4("One sentence here. Two sentences here.", S)[1] == "c4_too_few_sentences"
    five = "One is here. Two is here. Three is here. Four is here. Five is here."
    assert filters.c4(five, S)[1] is None
    assert filters.c4(five.rsplit(" ", 3)[0] + ".", S)[1] == "c4_too_few_sentences"


# --------------------------------------------------------------------------- FineWeb


def test_fineweb_rules():
    lines = [f"{SENTENCE} Number {i}." for i in range(10)]
    assert filters.fineweb("\n".join(lines), S) is None
    unpunctuated = [line.rstrip(".") for line in lines]
    assert filters.fineweb("\n".join(unpunctuated), S) == "fineweb_line_punct_ratio"
    short = [f"Item {i}." for i in range(10)] + lines[:3]
    assert filters.fineweb("\n".join(short), S) == "fineweb_short_line_ratio"
    assert filters.fineweb("\n".join(lines + lines[:1]), S) == "fineweb_char_dup_ratio"


# --------------------------------------------------------------------------- bad words, cleaning


def test_badwords_match_whole_words_from_a_configurable_list(tmp_path):
    (tmp_path / "xx.txt").write_text("# mine\nzorble\nrude phrase\n")
    s = CurateSettings(
        badwords_dir=str(tmp_path), badwords_language="xx", steps=["badwords"], min_words=0
    )
    from scratchlm.data.steps import load_badwords

    words, phrases = load_badwords(s)
    assert filters.badwords("A Zorble appeared.", words, phrases) == "bad_words"
    assert filters.badwords("zorbles are fine", words, phrases) is None  # whole words only
    assert filters.badwords("such a RUDE PHRASE", words, phrases) == "bad_words"
    shipped = load_badwords(CurateSettings())
    assert "fuck" in shipped[0]


def test_mojibake_and_gutenberg_cleaning():
    assert normalize("The cafÃ© was Ã  la mode", fix_mojibake=True) == "The café was à la mode"
    assert normalize("The cafÃ© was", fix_mojibake=False) == "The cafÃ© was"
    book = (
        "The Project Gutenberg eBook of X\nlicence text\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\nChapter 1. It begins.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence"
    )
    assert strip_gutenberg(book) == ("Chapter 1. It begins.", True)
    assert strip_gutenberg("no markers here") == ("no markers here", False)


# --------------------------------------------------------------------------- PII


def test_pii_masking_and_what_it_leaves_alone():
    counts: Counter = Counter()
    text = (
        "Write to jane.doe+news@example.co.uk or call +1 415-555-0132 or (020) 7946 0958. "
        "Server 192.168.0.12 and fe80:0000:0000:0000:0202:b3ff:fe1e:8329 are up. "
        "In 1999 it cost 1,234.50 dollars; version 10.2.3; order 12345678."
    )
    masked = mask_pii(text, ["email", "phone", "ip"], counts)
    assert "<EMAIL>" in masked and "jane" not in masked
    assert masked.count("<PHONE>") == 2 and masked.count("<IP_ADDRESS>") == 2
    assert "1999" in masked and "1,234.50" in masked and "10.2.3" in masked and "12345678" in masked
    assert counts == {"pii_email": 1, "pii_phone": 2, "pii_ip": 2}
    assert mask_pii(text, ["email"], Counter()).count("<PHONE>") == 0


# --------------------------------------------------------------------------- language ID


LANGUAGES = {
    "en": "The weather is lovely today and we are going to walk in the park together.",
    "fr": "Il fait très beau aujourd'hui et nous allons nous promener dans le parc ensemble.",
    "de": "Das Wetter ist heute herrlich und wir gehen zusammen im Park spazieren.",
    "es": "Hoy hace un tiempo precioso y vamos a pasear juntos por el parque.",
    "ru": "Сегодня прекрасная погода, и мы вместе пойдём гулять в парк.",
    "ja": "今日はとても良い天気なので、一緒に公園を散歩しましょう。",
}


def test_language_id_on_several_languages(tmp_path):
    from scratchlm.data.fasttext_models import LanguageID

    lid = LanguageID()
    for code, text in LANGUAGES.items():
        lang, score = lid.predict(text)
        assert lang == code and score > 0.65, (code, lang, score)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in LANGUAGES.values()))
    s = CurateSettings(sources=[str(src)], steps=["language"], languages=["fr", "de"], min_words=0)
    report = curate(s, tmp_path / "out", progress=False)
    kept = [d["meta"]["language"] for d in iter_curated(tmp_path / "out")]
    assert kept == ["fr", "de"] and report["dropped"]["language_not_wanted"]["count"] == 4
    assert report["languages"] == {code: 1 for code in LANGUAGES}


# --------------------------------------------------------------------------- quality classifier


def styles(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    nouns = ["garden", "river", "history", "letter", "museum", "library", "village", "harvest"]
    good = [
        f"The {rng.choice(nouns)} was described in detail by the local {rng.choice(nouns)} society, "
        f"whose members had studied the {rng.choice(nouns)} for many years."
        for _ in range(n)
    ]
    spam = [
        f"CLICK HERE!!! best {rng.choice(nouns)} deals $$$ buy now free {rng.choice(nouns)} "
        f"winner!!! limited offer {rng.randint(1, 99)}% off"
        for _ in range(n)
    ]
    return good, spam


def test_quality_classifier_separates_two_styles_and_filters(tmp_path):
    from scratchlm.cli import main

    good, spam = styles(150, 0)
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good))
    (tmp_path / "spam.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in spam))
    argv = ["curate", "train-quality", "--positive", str(tmp_path / "good.jsonl")]
    argv += ["--negative", str(tmp_path / "spam.jsonl"), "--out", str(tmp_path / "q")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert report["precision"] >= 0.95 and report["recall"] >= 0.95

    new_good, new_spam = styles(20, 1)
    src = tmp_path / "mixed.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for pair in zip(new_good, new_spam, strict=True)
            for t in pair
        )
    )
    model = str(tmp_path / "q" / "quality.bin")
    s = CurateSettings(sources=[str(src)], steps=["quality"], quality_model=model, min_words=0)
    curate(s, tmp_path / "out", progress=False)
    kept = [d["text"] for d in iter_curated(tmp_path / "out")]
    assert kept == new_good
    top = CurateSettings(
        sources=[str(src)], steps=["quality"], quality_model=model, quality_top_fraction=0.25
    )
    report = curate(top, tmp_path / "top", progress=False)
    assert (
        report["documents_out"] == 10
        and report["dropped"]["quality_not_in_top_fraction"]["count"] == 30
    )


# --------------------------------------------------------------------------- dedup


def test_exact_line_and_near_dedup_with_known_duplicates(tmp_path):
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(3000)]
    originals = [" ".join(rng.choice(vocab) for _ in range(300)) for _ in range(30)]
    near = []
    for text in originals[:10]:  # 1% of the words changed
        words = text.split()
        for k in rng.sample(range(300), 3):
            words[k] = rng.choice(vocab)
        near.append(" ".join(words))
    exact = [originals[20].upper() + "  "]  # equal up to case and whitespace
    docs = originals + near + exact
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    s = CurateSettings(sources=[str(src)], steps=["exact_dedup", "near_dedup"], min_words=0)
    report = curate(s, tmp_path / "out", progress=False)
    assert [d["text"] for d in iter_curated(tmp_path / "out")] == originals  # the first kept
    assert report["dropped"]["exact_duplicate"]["count"] == 1
    assert report["dropped"]["near_duplicate"]["count"] == 10
    first = report["dropped"]["near_duplicate"]["examples"][0]
    assert first["duplicate_of"] == f"{src}#1"
    assert report["near_duplicate_cluster_sizes"] == {"2": 10}

    header = "Home | About | Contact us for more information"
    pages = [f"{header}\n{originals[i]}" for i in range(3)]
    src2 = tmp_path / "pages.jsonl"
    src2.write_text("".join(json.dumps({"text": t}) + "\n" for t in pages))
    s = CurateSettings(sources=[str(src2)], steps=["line_dedup"], min_words=0)
    report = curate(s, tmp_path / "lines", progress=False)
    texts = [d["text"] for d in iter_curated(tmp_path / "lines")]
    assert texts == [pages[0], originals[1], originals[2]]
    assert report["changes"]["duplicate_lines_removed"] == 2


def test_minhash_estimates_jaccard():
    hasher = MinHasher(permutations=256, ngram=1)
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(20, 120))  # Jaccard 80 / 120
    sa, sb = hasher.signature(a), hasher.signature(b)
    assert abs((sa == sb).mean() - 80 / 120) < 0.08
    roots, sizes = near_duplicate_clusters([sa, sb, sa], bands=32, threshold=0.9)
    assert roots == [0, 1, 0] and sizes == {0: 2}


# --------------------------------------------------------------------------- sources and bad input


def test_every_source_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [f"{SENTENCE} Document {i}." for i in range(4)]
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": texts[0]}) + "\n" for _ in [0]).encode()
        )
    )
    pq.write_table(pa.table({"text": [texts[1]], "id": ["row-1"]}), src / "b.parquet")
    (src / "c.html").write_text(
        f"<html><head><script>var x;</script></head><body><nav>Home | Menu</nav>"
        f"<article><p>{texts[2]}</p></article><footer>Copyright</footer></body></html>"
    )
    body = texts[3].encode()
    record = (
        b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: http://example.com/x\r\n"
        b"WARC-Record-ID: <urn:uuid:1234>\r\nContent-Type: text/plain\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        + b"\r\n\r\n"
    )
    (src / "d.warc.wet.gz").write_bytes(gzip.compress(record))
    (src / "e.wet").write_bytes(record)
    s = CurateSettings(sources=[str(src)], min_words=0, steps=["normalize"])
    curate(s, tmp_path / "out", progress=False)
    docs = list(iter_curated(tmp_path / "out"))
    assert [d["text"] for d in docs] == texts + [texts[3]]
    assert docs[1]["id"] == "row-1" and docs[3]["id"] == "<urn:uuid:1234>"
    assert docs[3]["meta"]["url"] == "http://example.com/x"


def test_hf_datasets_saved_locally(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"{SENTENCE} Row {i}." for i in range(5)]
    datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "ds"))
    s = CurateSettings(sources=[f"hf:{tmp_path / 'ds'}"], text_field="content", min_words=0)
    report = curate(s, tmp_path / "out", progress=False)
    assert [d["text"] for d in iter_curated(tmp_path / "out")] == texts
    assert report["documents_in"] == 5


def test_bad_input_of_every_kind_is_counted(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text(
        json.dumps({"text": prose(30)})
        + "\n{broken\n"
        + json.dumps({"body": "x"})
        + "\n"
        + json.dumps({"text": ""})
        + "\n"
        + json.dumps({"text": "huge " * 5000})
        + "\n"
    )
    (src / "b.txt").write_bytes(b"caf\xe9 " + prose(30).encode())
    (src / "c.txt").write_bytes(b"\x00\x01\x02binary")
    (src / "d.parquet").write_bytes(b"PAR1 not really parquet")
    s = CurateSettings(sources=[str(src)], min_words=1, max_doc_chars=10_000)
    report = curate(s, tmp_path / "out", progress=False)
    assert {kind: b["count"] for kind, b in report["bad_input"].items()} == {
        "malformed_json_line": 1,
        "missing_text_field": 1,
        "invalid_utf8_repaired": 1,
        "binary_file": 1,
        "corrupt_file": 1,
    }
    assert report["bad_input"]["corrupt_file"]["where"] == [str(src / "d.parquet")]
    assert report["dropped"]["empty"]["count"] == 1
    assert report["dropped"]["huge_document"]["count"] == 1
    assert report["documents_out"] == 2


def test_settings_are_checked_before_any_work():
    with pytest.raises(SettingsError, match="unknown step 'gopherr'"):
        CurateSettings(steps=["gopherr"])
    with pytest.raises(SettingsError, match="come after the per-document steps"):
        CurateSettings(steps=["exact_dedup", "gopher"])
    with pytest.raises(SettingsError, match="quality_model is not set"):
        CurateSettings(steps=["quality"])
    with pytest.raises(SettingsError, match="must divide"):
        CurateSettings(minhash_bands=7)


# --------------------------------------------------------------------------- output, report, executors


def corpus(tmp_path, n: int = 400):
    rng = random.Random(5)
    vocab = [
        "the",
        "of",
        "and",
        "to",
        "that",
        "with",
        "have",
        "be",
        "river",
        "garden",
        "window",
        "morning",
        "letter",
        "music",
    ]
    docs = []
    for i in range(n):
        text = ". ".join(" ".join(rng.choice(vocab) for _ in range(12)) for _ in range(8)) + "."
        docs.append(text if i % 7 else docs[-1] if docs else text)  # some exact duplicates
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return src


FULL = [
    "normalize",
    "length",
    "gopher",
    "repetition",
    "c4",
    "fineweb",
    "badwords",
    "pii",
    "exact_dedup",
    "line_dedup",
    "near_dedup",
]


def test_output_is_identical_across_worker_counts_and_formats(tmp_path):
    src = corpus(tmp_path)
    outs = {}
    for workers, fmt in ((1, "jsonl.zst"), (2, "jsonl.zst"), (2, "parquet")):
        s = CurateSettings(
            sources=[str(src)], steps=FULL, workers=workers, output_format=fmt, min_words=5
        )
        report = curate(s, tmp_path / f"out{workers}{fmt}", progress=False)
        outs[(workers, fmt)] = (
            list(iter_curated(tmp_path / f"out{workers}{fmt}")),
            report["funnel"],
        )
    assert outs[(1, "jsonl.zst")] == outs[(2, "jsonl.zst")] == outs[(2, "parquet")]
    docs, funnel = outs[(1, "jsonl.zst")]
    assert 0 < len(docs) < 400 and [f["step"] for f in funnel] == FULL
    for before, after in zip(funnel, funnel[1:], strict=False):
        assert after["documents_in"] == before["documents_out"]  # each step feeds the next
    report = json.loads((tmp_path / "out1jsonl.zst" / "report.json").read_text())
    lengths = report["words_per_document"]
    assert sum(lengths["in"].values()) == 400 and sum(lengths["out"].values()) == len(docs)
    assert set(lengths["in"]) == {"64-127"}  # 8 sentences of 12 words: 96 words each
    assert (tmp_path / "out1jsonl.zst" / "funnel.png").stat().st_size > 1000
    md = (tmp_path / "out1jsonl.zst" / "report.md").read_text()
    assert "| exact_dedup |" in md and "## Why documents were dropped" in md


def test_ray_executor_matches_local(tmp_path):
    pytest.importorskip("ray")
    src = corpus(tmp_path, 300)
    local = CurateSettings(sources=[str(src)], steps=FULL, workers=2, min_words=5)
    curate(local, tmp_path / "local", progress=False)
    on_ray = CurateSettings(sources=[str(src)], steps=FULL, workers=2, min_words=5, executor="ray")
    curate(on_ray, tmp_path / "ray", progress=False)
    assert list(iter_curated(tmp_path / "ray")) == list(iter_curated(tmp_path / "local"))


def gopher_walk(words: list[str], n: int) -> int:
    """Gopher's duplicate n-gram count written plainly (the reference the fast one must match)."""
    seen, repeated, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = tuple(words[i : i + n])
        if gram in seen:
            repeated += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


def test_fast_repeated_ngram_walk_equals_the_plain_walk():
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from scratchlm.data.filters import ngram_keys, repeated_ngram_chars

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(st.sampled_from(["a", "bb", "c", "dd", "e"]), min_size=1, max_size=60),
        st.integers(1, 7),
    )
    def check(words, n):
        if len(words) < n:
            return
        index = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.array([index[w] for w in words], dtype=np.uint64)
        prefix = np.concatenate([[0], np.cumsum([len(w) for w in words])])
        assert (repeated_ngram_chars(ngram_keys(ids, n), n, prefix) or 0) == gopher_walk(words, n)

    check()
