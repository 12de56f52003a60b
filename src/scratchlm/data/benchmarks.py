"""Benchmark files: the evaluation sets' formats, read as records, and each item's own words.

Evaluation (eval/choice.py) turns a record into a prompt; decontamination (decontaminate.py)
wants the item as a web page would hold it: the question and its right answer, no prompt.

    hellaswag  {"ctx_a", "ctx_b", "activity_label", "endings", "label"}
    arc        {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} (AI2's files)
               or {"question", "choices": {"text", "label"}, "answerKey"} (the HF copy)
    piqa       {"goal", "sol1", "sol2", "label"} (or labels in a sibling <name>-labels.lst)
    mmlu       {"question", "choices", "answer"} JSONL, or the original CSV rows
    mc         {"context", "choices", "answer"}: any task of your own
    text       any other record: its text field, else its string fields joined (GSM8K's
               question and answer, say); a .txt / .md file is one item

A benchmark is named by a spec: PATH (.jsonl[.gz|.zst], .csv, .parquet, .txt, .md), FORMAT:PATH
to force a format, or hf:FOLDER (or just FOLDER) for a dataset saved with `save_to_disk`. A glob
(mmlu:data/test/*.csv) stands for every file it matches, each its own benchmark.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError
from scratchlm.io import file_sha256

MC_FORMATS = ("hellaswag", "arc", "piqa", "mmlu", "mc")
FORMATS = MC_FORMATS + ("text",)
TEXT_FILES = (".txt", ".md", ".markdown", ".rst")


def detect_format(record: dict[str, Any]) -> str:
    """The multiple-choice format of one JSON record, by the keys it has."""
    if "endings" in record and "ctx_a" in record:
        return "hellaswag"
    if "answerKey" in record:
        return "arc"
    if "goal" in record and "sol1" in record:
        return "piqa"
    if "question" in record and "choices" in record:
        return "mmlu"
    if "choices" in record and "answer" in record:
        return "mc"
    raise ValueError(f"unknown item layout (keys {sorted(record)})")


def _open_text(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # noqa: SIM115 (closed with the wrapper)
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")


def read_records(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed record or the error) for each non-blank line of a JSONL or CSV
    file (MMLU's original CSV: question, the choices, the answer letter; no header)."""
    out: list[tuple[int, Any]] = []
    with _open_text(path) as f:
        if path.name.endswith((".csv", ".csv.gz")):
            for i, row in enumerate(csv.reader(f), start=1):
                rec = {"question": row[0], "choices": row[1:-1], "answer": row[-1]} if len(row) >= 3 else ValueError("fewer than 3 columns")  # fmt: skip
                out.append((i, rec))
            return out
        for i, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append((i, json.loads(line)))
                except (json.JSONDecodeError, RecursionError) as e:  # (nested too deep)
                    out.append((i, e))
    return out


def piqa_labels(path: Path) -> list[str] | None:
    # PIQA ships its answers apart: valid.jsonl + valid-labels.lst, one label a line.
    stem = path.name.split(".")[0]
    labels = path.with_name(f"{stem}-labels.lst")
    return labels.read_text().split() if labels.is_file() else None


def hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag preprocess: WikiHow's "[title]" markers and bracketed notes removed.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _gold(choices: list[Any], answer: Any, letters: list[str] | None = None) -> str:
    """The right choice's text: `answer` is an index, or a letter among `letters`."""
    if letters is not None:
        return str(choices[letters.index(answer)])
    if isinstance(answer, str) and not answer.strip().isdigit():
        return str(choices["ABCDEFGHIJ".index(answer.strip())])
    return str(choices[int(answer)])


def item_text(record: dict[str, Any], fmt: str, text_field: str = "text") -> str:
    """An item's own words: its question (or context) and its right answer. Raises
    ValueError, KeyError, TypeError or IndexError for a record that is not of `fmt`."""
    if fmt == "hellaswag":
        context = hellaswag_clean(record["ctx_a"] + " " + record["ctx_b"])
        return f"{context} {hellaswag_clean(_gold(record['endings'], record['label']))}"
    if fmt == "arc":
        q = record["question"]
        if isinstance(q, dict):
            stem = q["stem"]
            texts, labels = [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
        else:
            stem, texts, labels = q, record["choices"]["text"], record["choices"]["label"]
        return f"{stem} {_gold(texts, record['answerKey'], labels)}"
    if fmt == "piqa":
        return f"{record['goal']} {_gold([record['sol1'], record['sol2']], record['label'])}"
    if fmt == "mmlu":
        return f"{record['question']} {_gold(list(record['choices']), record['answer'])}"
    if fmt == "mc":
        context = record.get("context", record.get("query", ""))
        return f"{context} {_gold(list(record['choices']), record['answer'])}"
    text = record.get(text_field)
    if not isinstance(text, str):
        text = " ".join(v for v in record.values() if isinstance(v, str))
    if not text.strip():
        raise ValueError("no text in the record")
    return text


@dataclass
class Benchmark:
    """The items of one evaluation set, as text, and where each came from."""

    name: str  # the spec it was read from
    texts: list[str] = field(default_factory=list)
    positions: list[int | str] = field(default_factory=list)  # line, row, or an item id
    skipped: list[int] = field(default_factory=list)  # malformed lines or rows


def parse_spec(spec: str) -> tuple[str, str]:
    """("auto" or a forced format, the path or hf:FOLDER) of a benchmark spec."""
    fmt, _, rest = spec.partition(":")
    if fmt in FORMATS and rest:
        return fmt, rest
    return "auto", spec


def expand_specs(specs: list[str]) -> list[str]:
    """Each glob replaced by the files it matches (sorted; an error if none), duplicates gone."""
    out: list[str] = []
    for spec in specs:
        fmt, target = parse_spec(spec)
        if not any(ch in target for ch in "*?[") or Path(target).exists():
            out.append(spec)
            continue
        matches = sorted(p for p in glob.glob(target, recursive=True) if Path(p).is_file())
        if not matches:
            raise StageError(f"benchmark {spec}: the glob matches no file")
        out += [f"{fmt}:{m}" if fmt != "auto" else m for m in matches]
    return list(dict.fromkeys(out))


def _hf_folder(target: str) -> Path | None:
    folder = Path(target.removeprefix("hf:"))
    saved = ("dataset_dict.json", "state.json", "dataset_info.json")
    if folder.is_dir() and (target.startswith("hf:") or any((folder / f).exists() for f in saved)):
        return folder
    return None


def _hf_records(folder: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    row = 0
    for split in splits:
        for record in split:
            row += 1
            yield row, record


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def load_benchmark(spec: str, text_field: str = "text") -> Benchmark:
    """Every item of a benchmark spec as text. Malformed lines are skipped and listed; a
    missing file, or one with no item at all, is an error naming it."""
    fmt, target = parse_spec(spec)
    folder = _hf_folder(target)
    path = Path(target)
    if folder is None and not path.is_file():
        raise StageError(
            f"benchmark {spec}: no such file (or dataset folder saved with save_to_disk)"
        )
    bench = Benchmark(spec)
    if folder is None and path.name.endswith(TEXT_FILES):
        bench.texts.append(path.read_text(encoding="utf-8", errors="replace"))
        bench.positions.append(1)
        return bench
    try:
        if folder is not None:
            records: Any = _hf_records(folder)
        elif path.name.endswith(".parquet"):
            records = _parquet_records(path)
        else:
            records = read_records(path)
        labels = piqa_labels(path) if folder is None else None
        for n, (where, rec) in enumerate(records):
            try:
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                if labels is not None and "label" not in rec and n < len(labels):
                    rec = rec | {"label": labels[n]}
                kind = fmt
                if kind == "auto":
                    try:
                        kind = detect_format(rec)
                    except ValueError:
                        kind = "text"
                bench.texts.append(item_text(rec, kind, text_field))
                bench.positions.append(where)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                bench.skipped.append(where)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise StageError(f"benchmark {spec}: cannot read it: {e}") from None
    if not bench.texts:
        raise StageError(
            f"benchmark {spec}: no item in it ({len(bench.skipped)} malformed line(s) or row(s))"
        )
    return bench


def benchmark_fingerprint(spec: str) -> str:
    """The content hash of a benchmark's file(s), for the stage cache ("" if it is missing:
    curation will say so)."""
    _, target = parse_spec(spec)
    folder = _hf_folder(target)
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return ",".join(f"{p.relative_to(folder)}:{file_sha256(p)}" for p in files)
    path = Path(target)
    if not path.is_file():
        return ""
    labels = path.with_name(f"{path.name.split('.')[0]}-labels.lst")
    return file_sha256(path) + (f"+{file_sha256(labels)}" if labels.is_file() else "")
