"""The curation report: report.json for programs, report.md for people, funnel.png for a glance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.io import atomic_open, atomic_write_json, atomic_write_text


@dataclass
class CurateSummary:
    """The report's headline numbers, for the pipeline's manifest and the CLI."""

    documents_in: int
    documents_out: int
    chars_out: int
    dropped: dict[str, int]  # reason -> documents
    bad_input: int = 0  # records, files and links that could not be read (report.md: where)

    def headline(self) -> str:
        bad = f", {self.bad_input:,} bad input (see report.md)" if self.bad_input else ""
        return f"{self.documents_in:,} documents in, {self.documents_out:,} kept{bad}"

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> CurateSummary:
        dropped = {reason: d["count"] for reason, d in report["dropped"].items()}
        bad = sum(b["count"] for b in report["bad_input"].values())
        return cls(
            report["documents_in"], report["documents_out"], report["chars_out"], dropped, bad
        )


def count_words(text: str, window: int = 1 << 20) -> int:
    """len(text.split()), in bounded memory: split() of a 100 MB one-line document builds a
    list of millions of strings, so a long text is split a window at a time."""
    if len(text) <= window:
        return len(text.split())
    words = 0
    for start in range(0, len(text), window):
        part = text[start : start + window]
        words += len(part.split())
        if start and not text[start - 1].isspace() and not part[0].isspace():
            words -= 1  # one word cut in two by the window's edge
    return words


def length_bin(words: int) -> str:
    """A power-of-two bin of words per document: "0", "1-1", "2-3", "4-7", ..."""
    if words <= 0:
        return "0"
    lo = 1 << int(math.log2(words))
    return f"{lo}-{2 * lo - 1}"


def _by_bin(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0].split("-")[0])))


def write_reports(
    run: Any, shards: list[dict[str, Any]], settings: Any, out: Path, seconds: float
) -> dict[str, Any]:
    acc = run.account
    funnel = [
        {
            "step": step,
            "documents_in": v[0],
            "documents_out": v[1],
            "chars_in": v[2],
            "chars_out": v[3],
        }
        for step, v in acc.funnel.items()
    ]
    report = {
        "documents_in": run.stats["documents_in"],
        "documents_out": run.stats["documents_out"],
        "chars_in": run.stats["chars_in"],
        "chars_out": run.stats["chars_out"],
        "bytes_out": run.stats["bytes_out"],  # UTF-8 bytes of the kept texts
        "steps": list(settings.steps),
        "funnel": funnel,
        "dropped": {
            reason: {"count": n, "examples": acc.examples.get(reason, [])}
            for reason, n in acc.drops.most_common()
        },
        "bad_input": run.bad.to_report(),  # kind -> {"count", "where": first few file:line}
        "changes": dict(acc.counts.most_common()),
        "languages": dict(acc.languages.most_common()),
        "words_per_document": {k: _by_bin(v) for k, v in run.lengths.items()},
        "near_duplicate_cluster_sizes": {str(k): n for k, n in sorted(run.clusters.items())},
        "shards": shards,
        "seconds": seconds,
        "sources": run.sources.to_dict(),
        "decontamination": run.decontamination.report() if run.decontamination else None,
        "settings": dataclasses.asdict(settings),
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    plot_funnel(report, out / "funnel.png")
    return report


def markdown(r: dict[str, Any]) -> str:
    pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
    lines = [
        "# Curation report",
        "",
        f"{r['documents_in']:,} documents in, {r['documents_out']:,} out "
        f"({pct(r['documents_out'], r['documents_in'])}); {r['chars_in']:,} characters in, "
        f"{r['chars_out']:,} out ({pct(r['chars_out'], r['chars_in'])}).",
        "",
        "## Funnel",
        "",
        "| step | documents in | out | kept | characters in | out |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in r["funnel"]:
        lines.append(
            f"| {f['step']} | {f['documents_in']:,} | {f['documents_out']:,} | "
            f"{pct(f['documents_out'], f['documents_in'])} | {f['chars_in']:,} | {f['chars_out']:,} |"
        )
    lines += ["", "## Why documents were dropped", ""]
    if not r["dropped"]:
        lines.append("Nothing was dropped.")
    for reason, d in r["dropped"].items():
        lines.append(f"- **{reason}**: {d['count']:,}")
        for ex in d["examples"]:
            excerpt = " ".join(ex["text"].split())[:120]
            extra = f" (duplicate of `{ex['duplicate_of']}`)" if "duplicate_of" in ex else ""
            lines.append(f"  - `{ex['id']}`{extra}: {excerpt}")
    if r["bad_input"]:
        lines += ["", "## Bad input (skipped while reading)", ""]
        for kind, b in r["bad_input"].items():
            more = ", ..." if b["count"] > len(b["where"]) else ""
            lines.append(f"- {kind}: {b['count']:,} ({', '.join(b['where'])}{more})")
    for title, key in (
        ("Changes inside kept documents", "changes"),
        ("Languages detected", "languages"),
        ("Near-duplicate clusters (size: how many)", "near_duplicate_cluster_sizes"),
    ):
        if r[key]:
            lines += ["", f"## {title}", ""] + [f"- {k}: {v:,}" for k, v in r[key].items()]
    lines += _decontamination(r.get("decontamination"))
    lines += ["", "## Words per document", "", "| words | in | out |", "| --- | ---: | ---: |"]
    hist = r["words_per_document"]
    for b in sorted(set(hist["in"]) | set(hist["out"]), key=lambda k: int(k.split("-")[0])):
        lines.append(f"| {b} | {hist['in'].get(b, 0):,} | {hist['out'].get(b, 0):,} |")
    return "\n".join(lines) + "\n"


def _decontamination(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    lines = ["", f"## Decontamination ({d['ngram']}-word overlap with benchmark items)", "",
             "| benchmark | items | too short | documents touched | items touched |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, b in d["benchmarks"].items():
        lines.append(f"| {name} | {b['items']:,} | {b['items_too_short']:,} | {b['documents']:,} | {b['items_touched']:,} |")  # fmt: skip
    for name, b in d["benchmarks"].items():
        for ex in b["examples"]:
            lines.append(f"- {name}: `{ex['id']}` shares \"{ex['ngram']}\" with item {ex['item_position']}: {ex['item'][:120]}")  # fmt: skip
    return lines


def plot_funnel(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input"] + [f["step"] for f in r["funnel"]]
    docs = [r["documents_in"]] + [f["documents_out"] for f in r["funnel"]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), docs, color="#4c72b0")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for i, n in enumerate(docs):
        ax.text(n, i, f" {n:,}", va="center")
    ax.set_xlabel("documents remaining after each step")
    ax.set_xlim(0, max(docs + [1]) * 1.2)
    ax.set_title("curation funnel")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
