"""The dataset card: <work>/curated/README.md, a Hugging Face dataset card made from report.json.

The front matter is the YAML that the Hub and `huggingface_hub.DatasetCard` read: license
(`curate.license`), language (`curate.languages`), size category, task, and `configs` +
`dataset_info.features` pointing at the shards, so that `datasets.load_dataset(<folder>)` reads
them as they are (`meta` is declared as JSON: its keys differ between sources). The body says
where the text came from and what each step did to it: sources and their mix, every step with
its thresholds and what it removed, dedup ratios, decontamination, and token counts per split
once `tokenize` ran.

The card is a view of report.json and tokens/meta.json, nothing more: `write_card` can rebuild
it at any time. The pipeline rewrites it (atomically) after `tokenize`, and it is not among the
curate stage's tracked outputs, so the rewrite never makes the stage look stale.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from scratchlm.data.settings import CORPUS_STEPS, DOCUMENT_STEPS, CurateSettings
from scratchlm.data.sources import Document, resolve_sources
from scratchlm.io import atomic_write_text

CARD = "README.md"
SHARD_GLOB = {"jsonl": "docs_*.jsonl", "jsonl.zst": "docs_*.jsonl.zst", "parquet": "docs_*.parquet"}
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
         (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
         (1_000_000_000_000, "100B<n<1T")]  # fmt: skip


class SourceMix:
    """Documents and characters per entry of curate.sources, as read and as kept."""

    def __init__(self, sources: list[str]):
        self.owner: dict[str, str] = {}
        for spec in sources:
            for item in resolve_sources([spec]):
                self.owner.setdefault(str(item), spec)
        self.counts = {spec: [0, 0, 0, 0] for spec in sources}  # read, chars, kept, chars

    def _row(self, doc: Document) -> list[int]:
        spec = self.owner.get(str(doc.meta.get("source", "")), "other")
        return self.counts.setdefault(spec, [0, 0, 0, 0])

    def read(self, docs: Iterator[Document]) -> Iterator[Document]:
        for doc in docs:
            row = self._row(doc)
            row[0] += 1
            row[1] += len(doc.text)
            yield doc

    def kept(self, docs: list[Document]) -> None:
        for doc in docs:
            row = self._row(doc)
            row[2] += 1
            row[3] += len(doc.text)

    def to_dict(self) -> dict[str, dict[str, int]]:
        names = ("documents_read", "chars_read", "documents_kept", "chars_kept")
        return {spec: dict(zip(names, row, strict=True)) for spec, row in self.counts.items()}


def step_settings() -> dict[str, list[str]]:
    """Each step's settings, found by the step name their help text starts with."""
    steps = set(DOCUMENT_STEPS + CORPUS_STEPS)
    out: dict[str, list[str]] = {}
    for f in dataclasses.fields(CurateSettings):
        step = f.metadata.get("help", "").split(":")[0].split(" ")[0]
        if step in steps:
            out.setdefault(step, []).append(f.name)
    return out


def size_category(n: int) -> str:
    return next((name for bound, name in SIZES if n < bound), "n>1T")


def front_matter(report: dict[str, Any]) -> dict[str, Any]:
    s = report["settings"]
    fmt = s["output_format"]
    meta = "string" if fmt == "parquet" else "json"  # parquet shards hold meta as a JSON string
    return {
        "license": s["license"],
        "language": list(s["languages"]),
        "size_categories": [size_category(report["documents_out"])],
        "task_categories": ["text-generation"],
        "tags": ["scratchlm", "pretraining"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": SHARD_GLOB[fmt]}]}
        ],
        "dataset_info": {
            "features": [
                {"name": "id", "dtype": "string"},
                {"name": "text", "dtype": "string"},
                {"name": "meta", "dtype": meta},
            ],
            # `datasets` caches a folder by this section: the sizes make a new corpus a new entry
            "splits": [
                {
                    "name": "train",
                    "num_bytes": report["bytes_out"],
                    "num_examples": report["documents_out"],
                }
            ],
            "download_size": sum(shard["bytes"] for shard in report["shards"]),
        },
    }


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _sources(report: dict[str, Any]) -> list[str]:
    mix = report.get("sources", {})
    kept = sum(r["chars_kept"] for r in mix.values())
    lines = ["## Sources", "", "| source | documents read | kept | characters kept | share of the text |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for spec, r in mix.items():
        lines.append(
            f"| `{spec}` | {r['documents_read']:,} | {r['documents_kept']:,} | "
            f"{r['chars_kept']:,} | {_pct(r['chars_kept'], kept)} |"
        )
    return lines


def _steps(report: dict[str, Any]) -> list[str]:
    s, knobs = report["settings"], step_settings()
    lines = ["## Steps", "", "In order; a step's thresholds are its settings (`curate.*`).", "",
             "| step | thresholds | documents in | out | removed | characters in | out |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for f in report["funnel"]:
        step = f["step"]
        shown = [k for k in knobs.get(step, []) if k != "decontaminate_against"]
        thresholds = ", ".join(f"{k}={s[k]}" for k in shown) or "-"
        removed = f["documents_in"] - f["documents_out"]
        lines.append(
            f"| {step} | {thresholds} | {f['documents_in']:,} | {f['documents_out']:,} | "
            f"{removed:,} ({_pct(removed, f['documents_in'])}) | {f['chars_in']:,} | {f['chars_out']:,} |"
        )
    if report["dropped"]:
        lines += ["", "Why documents were dropped:", ""]
        lines += [f"- {reason}: {d['count']:,}" for reason, d in report["dropped"].items()]
    return lines


def _dedup(report: dict[str, Any]) -> list[str]:
    rows = [f for f in report["funnel"] if f["step"] in ("exact_dedup", "line_dedup", "near_dedup")]
    if not rows:
        return []
    lines = ["## Deduplication", ""]
    for f in rows:
        lines.append(
            f"- {f['step']}: {f['documents_in'] - f['documents_out']:,} of {f['documents_in']:,} "
            f"documents removed ({_pct(f['documents_in'] - f['documents_out'], f['documents_in'])}), "
            f"{_pct(f['chars_in'] - f['chars_out'], f['chars_in'])} of the characters"
        )
    if n := report["changes"].get("duplicate_lines_removed"):
        lines.append(f"- duplicate lines removed: {n:,}")
    if sizes := report.get("near_duplicate_cluster_sizes"):
        lines.append("- near-duplicate clusters (size: how many): " + ", ".join(f"{k}: {v}" for k, v in sizes.items()))  # fmt: skip
    return lines


def _decontamination(report: dict[str, Any]) -> list[str]:
    d = report.get("decontamination")
    if not d:
        return []
    s = report["settings"]
    lines = ["## Decontamination", "",
             f"Documents sharing a {d['ngram']}-word sequence with a benchmark item (lowercase, "
             f"punctuation removed, as GPT-3 did) were {'dropped' if s['decontaminate_mode'] == 'drop' else 'cut'}: "
             f"{d['dropped']:,} dropped, {d['cut']:,} cut ({d['chars_removed']:,} characters).", "",
             "| benchmark | items | too short to check | documents touched | items touched |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, b in d["benchmarks"].items():
        lines.append(
            f"| `{name}` | {b['items']:,} | {b['items_too_short']:,} | {b['documents']:,} | {b['items_touched']:,} |"
        )
    for name, b in d["benchmarks"].items():
        for ex in b["examples"][:1]:
            lines.append(f"\n`{name}`, e.g. document `{ex['id']}` shares \"{ex['ngram']}\" with item {ex['item_position']}: {ex['item']}")  # fmt: skip
    return lines


def _tokens(tokens: dict[str, Any] | None) -> list[str]:
    if not tokens:
        return []
    lines = ["## Tokens", "", f"Tokenized with a vocabulary of {tokens['vocab_size']:,} (tokenizer "
             f"`{tokens['tokenizer']}`), documents held out for validation by the tokenize stage:", "",
             "| split | documents | tokens |", "| --- | ---: | ---: |"]  # fmt: skip
    for split, n in tokens["tokens"].items():
        lines.append(f"| {split} | {tokens['documents'][split]:,} | {n:,} |")
    return lines


def dataset_card(report: dict[str, Any], tokens: dict[str, Any] | None = None) -> str:
    """The card's text: YAML front matter, then the body."""
    s = report["settings"]
    tok = f", {sum(tokens['tokens'].values()):,} tokens" if tokens else ""
    lines = [
        "---",
        yaml.safe_dump(front_matter(report), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        "# Curated corpus",
        "",
        f"{report['documents_out']:,} documents, {report['chars_out']:,} characters{tok}: what "
        f"survived of {report['documents_in']:,} documents after the curation steps below "
        f'(scratchlm `curate`). Each record is `{{"id", "text", "meta"}}`; the id leads back to '
        f"the input (`<file>#<line or row>`). License: {s['license']}.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder", split="train")',
        "```",
        "",
    ]
    for part in (_sources, _steps, _dedup, _decontamination):
        if body := part(report):
            lines += body + [""]
    if body := _tokens(tokens):
        lines += body + [""]
    if report.get("bad_input"):
        lines += ["## Bad input", "", "Skipped while reading (see report.json for where):", ""]
        for kind, bad in report["bad_input"].items():
            where = f" (first: {bad['where'][0]})" if bad.get("where") else ""
            lines.append(f"- {kind}: {bad['count']:,}{where}")
        lines.append("")
    return "\n".join(lines)


def write_card(folder: Path, tokens: dict[str, Any] | None = None) -> Path:
    """(Re)write `folder`/README.md from its report.json (and a tokens meta.json's counts)."""
    report = json.loads((folder / "report.json").read_text())
    atomic_write_text(folder / CARD, dataset_card(report, tokens))
    return folder / CARD
