"""Curation never crashes on bad input, never loses a record without counting it, and says
where each kind of bad input is (file:line), so a user can go and look."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from scratchlm.data.curate import Curation, curate
from scratchlm.data.report import CurateSummary
from scratchlm.data.settings import CurateSettings

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today."


def jsonl(n: int, tag: str = "d") -> bytes:
    return "".join(json.dumps({"text": f"{tag}{i} {SENTENCE}"}) + "\n" for i in range(n)).encode()


def run(tmp_path: Path, *sources: Path | str, **settings) -> dict:
    s = CurateSettings(sources=[str(p) for p in sources], min_words=0, steps=[], **settings)
    return curate(s, tmp_path / "out", progress=False)


def bad(report: dict) -> dict[str, tuple[int, list[str]]]:
    return {kind: (b["count"], b["where"]) for kind, b in report["bad_input"].items()}


def test_a_line_nested_100000_deep_is_counted_not_a_crash(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(jsonl(1) + b"[" * 100_000 + b"]" * 100_000 + b"\n" + jsonl(1, "e"))
    report = run(tmp_path, src)
    assert bad(report) == {"json_nested_too_deep": (1, [f"{src}:2"])}
    assert report["documents_in"] == 2


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_a_truncated_compressed_file_is_flagged_where_it_ends(tmp_path, suffix):
    data = jsonl(6000)
    packed = gzip.compress(data) if suffix.endswith("gz") else zstandard.compress(data)
    src = tmp_path / f"cut{suffix}"
    src.write_bytes(packed[: len(packed) // 2])
    report = run(tmp_path, src)
    read = report["documents_in"]
    assert 0 < read < 6000  # what came before the cut is kept ...
    assert bad(report) == {"truncated_file": (1, [f"{src}:{read + 1}"])}  # ... and the cut said


def test_multi_frame_zstd_reads_whole(tmp_path):
    src = tmp_path / "frames.jsonl.zst"
    src.write_bytes(zstandard.compress(jsonl(50, "a")) + zstandard.compress(jsonl(50, "b")))
    report = run(tmp_path, src)
    assert report["documents_in"] == 100 and report["bad_input"] == {}


def test_a_parquet_file_damaged_midway_keeps_what_came_before_and_counts_the_rest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "rows.parquet"
    table = pa.table({"text": [f"row {i} {SENTENCE}" for i in range(5000)]})
    pq.write_table(table, src, row_group_size=1000, compression="zstd")
    data = bytearray(src.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # inside row group 3 of 5
    src.write_bytes(bytes(data))
    report = run(tmp_path, src)
    read = report["documents_in"]
    found = bad(report)
    assert 0 < read < 5000
    assert found["corrupt_file"] == (1, [f"{src}:row {read + 1}"])
    assert found["unread_records"] == (5000 - read, [f"{src}:rows {read + 1}-5000"])


def unreadable(path: Path) -> None:
    """A file whose read fails: a link to /proc/self/mem (reading its first page is an I/O
    error, even for root), or, for another user, a file they may not read."""
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/mem")
    else:
        path.write_text("secret")
        path.chmod(0)


def test_unreadable_files_are_counted_as_unreadable_with_their_path(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jsonl").write_bytes(jsonl(3))
    for name in ("a.txt", "b.jsonl", "c.html"):
        unreadable(src / name)
    report = run(tmp_path, src)
    kinds = bad(report)
    assert list(kinds) == ["unreadable_file"] and kinds["unreadable_file"][0] == 3
    where = [w.split(" (")[0] for w in kinds["unreadable_file"][1]]  # (the reason follows)
    assert where == [str(src / "a.txt"), f"{src / 'b.jsonl'}:1", str(src / "c.html")]
    assert report["documents_in"] == 3


def test_what_is_not_a_file_is_counted_with_where_it_is(tmp_path):
    src = tmp_path / "in"
    (src / "sub.txt").mkdir(parents=True)  # a folder named like a file: walked into
    (src / "sub.txt" / "inner.txt").write_text(SENTENCE)
    (src / "a.jsonl").write_bytes(jsonl(2) + b"\n   \n" + jsonl(1, "e"))  # two blank lines
    (src / "dangling.txt").symlink_to(tmp_path / "nowhere")
    (src / "loop1.txt").symlink_to(src / "loop2.txt")
    (src / "loop2.txt").symlink_to(src / "loop1.txt")
    os.mkfifo(src / "pipe.txt")  # reading it would wait forever
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.txt").write_text(SENTENCE)
    (src / "linked").symlink_to(elsewhere)  # rglob does not follow it: its files are not read
    (src / "notes.csv").write_text("a,b\n")
    report = run(tmp_path, src)
    assert bad(report) == {
        "blank_line": (2, [f"{src / 'a.jsonl'}:3", f"{src / 'a.jsonl'}:4"]),
        "dangling_link": (1, [str(src / "dangling.txt")]),
        "file_of_no_known_kind": (1, [str(src / "notes.csv")]),
        "linked_folder_not_followed": (1, [str(src / "linked")]),
        "not_a_regular_file": (1, [str(src / "pipe.txt")]),
        "symlink_loop": (2, [str(src / "loop1.txt"), str(src / "loop2.txt")]),
    }
    assert report["documents_in"] == 4  # a.jsonl's 3 and sub.txt/inner.txt
    assert CurateSummary.from_report(report).headline().endswith("8 bad input (see report.md)")
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"- blank_line: 2 ({src / 'a.jsonl'}:3, {src / 'a.jsonl'}:4)" in md


def test_a_glob_that_matches_a_folder_says_so(tmp_path):
    (tmp_path / "a.txt").write_text(SENTENCE)
    (tmp_path / "b.txt").mkdir()
    report = run(tmp_path, tmp_path / "*.txt")
    assert bad(report) == {"folder_not_a_file": (1, [str(tmp_path / "b.txt")])}


def test_only_the_first_few_locations_are_kept(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"{broken\n" * 40 + jsonl(1))
    count, where = bad(run(tmp_path, src))["malformed_json_line"]
    assert count == 40 and where == [f"{src}:{n}" for n in range(1, 6)]


def test_a_100_mb_class_document_is_dropped_in_bounded_memory(tmp_path):
    # 30 MB on one line (a 100 MB one behaves the same, only slower): splitting it into words
    # for the length histogram held ~10x its size; counting a window at a time holds ~2x.
    size = 30_000_000
    src = tmp_path / "huge.jsonl"
    src.write_text(json.dumps({"text": "word " * (size // 5)}) + "\n")
    s = CurateSettings(sources=[str(src)], min_words=0, steps=[], max_doc_chars=1_000_000)
    curation = Curation(s, tmp_path / "out", progress=False)
    tracemalloc.start()
    docs = list(curation.read())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert docs == [] and curation.account.drops["huge_document"] == 1
    assert curation.lengths["in"] == {"4194304-8388607": 1}  # 6,000,000 words, counted
    assert peak < 4 * size, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB document"


def test_a_damaged_curated_shard_is_named_not_skipped(tmp_path):
    from scratchlm.data.curate import iter_curated
    from scratchlm.errors import StageError

    src = tmp_path / "a.jsonl"
    src.write_bytes(jsonl(300))
    run(tmp_path, src)
    (shard,) = (tmp_path / "out").glob("docs_*")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(StageError, match=f"{shard.name} is damaged"):
        list(iter_curated(tmp_path / "out"))
