"""Evaluation results as files and tables: eval.json (everything, per item too) and eval.md."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError
from scratchlm.eval.stats import compare_scores
from scratchlm.io import atomic_write_json, atomic_write_text


@dataclass
class EvalSummary:
    """The headline of an evaluation (eval.json has everything), for the pipeline and CLI."""

    perplexity: dict[str, Any] | None
    tasks: dict[str, dict[str, Any]]  # name -> items, acc, acc_ci, acc_norm, chance
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> mode -> acc...
    phase: str = ""  # which of the pipeline's runs (eval.runs), when it evaluated several
    others: list[EvalSummary] = field(default_factory=list)  # the other runs' summaries

    def headline(self) -> str:
        tasks = ", ".join(f"{n} {100 * t['acc']:.0f}%" for n, t in self.tasks.items())
        answers = ", ".join(
            f"{name.removeprefix('builtin:')} {mode} {_pct_ci(m)}"
            for name, modes in self.answers.items()
            for mode, m in modes.items()
        )
        bpb = f"{self.perplexity['bits_per_byte']:.3f} bits/byte, " if self.perplexity else ""
        line = bpb + ", ".join(x for x in (tasks, answers) if x)
        if not self.others:
            return line
        return "; ".join(f"{s.phase}: {s.headline()}" for s in [self.as_one(), *self.others])

    def as_one(self) -> EvalSummary:
        return EvalSummary(self.perplexity, self.tasks, self.answers, self.phase)

    @classmethod
    def from_result(cls, result: dict[str, Any], phase: str = "") -> EvalSummary:
        keep = ("items", "acc", "acc_ci", "acc_norm", "chance")
        tasks = {n: {k: t[k] for k in keep} for n, t in result["tasks"].items()}
        answers = {
            n: {mode: {k: m[k] for k in ("items", "acc", "acc_ci")} for mode, m in modes.items()}
            for n, modes in result.get("answers", {}).items()
        }
        return cls(result.get("perplexity"), tasks, answers, phase)

    def __post_init__(self) -> None:  # read back from a manifest: the others are dicts
        self.others = [o if isinstance(o, EvalSummary) else EvalSummary(**o) for o in self.others]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _pct_ci(m: dict[str, Any]) -> str:
    """An accuracy with its 95% interval: "97% [95-98]"."""
    lo, hi = m["acc_ci"]
    return f"{100 * m['acc']:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def markdown(result: dict[str, Any]) -> str:
    """A markdown report: perplexity line, then one table row per task."""
    lines = []
    if model := result.get("model"):
        lines += [f"Model: `{model['path']}` ({model['checkpoint']}, {model['parameters']:,} parameters)", ""]  # fmt: skip
    if p := result.get("perplexity"):
        lines += [
            f"Held-out text: {p['documents']:,} document(s), {p['tokens']:,} tokens, {p['bytes']:,} bytes "
            f"(stride {p['stride']}): perplexity **{p['perplexity']:.2f}**, "
            f"**{p['bits_per_byte']:.4f} bits per byte**",
            "",
        ]
    if result.get("tasks"):
        lines += [
            "| task | items | acc % | 95% CI | acc_norm % | 95% CI | chance % | shots |",
            "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
        ]
        for name, t in result["tasks"].items():
            lo, hi = t["acc_ci"]
            nlo, nhi = t["acc_norm_ci"]
            lines.append(
                f"| {name} | {t['items']} | {_pct(t['acc'])} | {_pct(lo)}-{_pct(hi)} | "
                f"{_pct(t['acc_norm'])} | {_pct(nlo)}-{_pct(nhi)} | {_pct(t['chance'])} | {t['few_shot']} |"
            )
        skipped = {n: t["skipped_lines"] for n, t in result["tasks"].items() if t.get("skipped_lines")}  # fmt: skip
        for name, t in result["tasks"].items():
            if t.get("unencodable_items"):
                lines.append(
                    f"\n{name}: {t['unencodable_items']} item(s) use characters outside the vocabulary, left out"
                )
        for name, count in skipped.items():
            first = ", ".join(map(str, result["tasks"][name]["first_skipped"]))
            lines.append(f"\n{name}: {count} malformed line(s) skipped (lines {first}...)")
    lines += answers_table(result.get("answers", {}))
    for name, why in result.get("skipped_tasks", {}).items():
        lines.append(f"\n{name}: not scored: {why}")
    lines += _overlap(result)
    return "\n".join(lines) + "\n"


def answers_table(answers: dict[str, dict[str, Any]], phase: str = "") -> list[str]:
    """Answer tasks: pass@1 (greedy) without and with the tool, with 95% intervals."""
    if not answers:
        return []
    first = "| run " if phase else ""
    lines = ["", f"{first}| answer task | tool | items | pass@1 % | 95% CI |"]
    lines.append(("| --- " if phase else "") + "| --- | --- | ---: | ---: | --- |")
    for name, modes in answers.items():
        for mode, m in modes.items():
            lo, hi = m["acc_ci"]
            run = f"| {phase} " if phase else ""
            lines.append(
                f"{run}| {name} | {mode} | {m['items']} | {_pct(m['acc'])} | {_pct(lo)}-{_pct(hi)} |"
            )
    return lines


def phases_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Several runs of one pipeline (pretrained, fine-tuned, RL): their answer tasks side by
    side, then each run's whole report."""
    lines = []
    for phase, result in results.items():
        lines += answers_table(result.get("answers", {}), phase)[3 if lines else 0 :]  # one header
    lines = lines[1:] + [""] if lines else []
    for phase, result in results.items():
        lines += [f"## {phase}", "", markdown(result)]
    return "\n".join(lines)


def _warning(name: str, t: dict[str, Any], o: dict[str, Any]) -> str:
    return (
        f"task {name}: {t['overlapping']} of {t['items']} items share a {o['ngram']}-word "
        f"sequence with the training data ({o['train_data']}); their scores may be memory"
    )


def overlap_warnings(result: dict[str, Any]) -> list[str]:
    """One line per task whose items are in the training text."""
    o = result.get("overlap") or {}
    return [_warning(n, t, o) for n, t in o.get("tasks", {}).items() if t["overlapping"]]


def _overlap(result: dict[str, Any]) -> list[str]:
    o = result.get("overlap")
    if not o:
        return []
    if "skipped" in o:
        return ["", f"Items seen in training: {o['skipped']}."]
    counts = ", ".join(f"{n} {t['overlapping']} of {t['items']}" for n, t in o["tasks"].items())
    lines = ["", f"Items seen in training ({o['ngram']}-word overlap with {o['train_data']}, "
             f"{o['documents']:,} documents): {counts}."]  # fmt: skip
    for name, t in o["tasks"].items():
        if t["overlapping"]:
            lines.append(f"\n**Warning**: {_warning(name, t, o)}.")
            for ex in t["examples"][:2]:
                lines.append(f'- item `{ex["item_position"]}` is in `{ex["id"]}`: "{ex["ngram"]}"')
    return lines


def write_report(out_dir: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """eval.json and eval.md in `out_dir` (atomic writes)."""
    atomic_write_json(out_dir / "eval.json", result)
    atomic_write_text(out_dir / "eval.md", markdown(result))
    return out_dir / "eval.json", out_dir / "eval.md"


def read_report(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise StageError(f"{path}: not valid JSON; delete it to evaluate again") from None


def compare(a: dict[str, Any], b: dict[str, Any], resamples: int = 10_000) -> list[dict[str, Any]]:
    """Per shared task and metric: B - A, its 95% interval and whether it exceeds the noise."""
    rows = []
    for name in [t for t in a.get("tasks", {}) if t in b.get("tasks", {})]:
        for metric in ("acc", "acc_norm"):
            r = compare_scores(a["tasks"][name], b["tasks"][name], metric, resamples)
            rows.append({"task": name, "metric": metric, "a": a["tasks"][name][metric], "b": b["tasks"][name][metric]} | r)  # fmt: skip
    return rows


def compare_markdown(rows: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any]) -> str:
    lines = [
        "| task | metric | A % | B % | B - A | 95% CI | test | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        lo, hi = r["ci"]
        if not r["significant"]:
            verdict = "within the noise"
        else:
            verdict = "B better" if r["difference"] > 0 else "A better"
        lines.append(
            f"| {r['task']} | {r['metric']} | {_pct(r['a'])} | {_pct(r['b'])} | {100 * r['difference']:+.1f} | "
            f"{100 * lo:+.1f} to {100 * hi:+.1f} | {r['test']} | {verdict} |"
        )
    only = sorted(set(a.get("tasks", {})) ^ set(b.get("tasks", {})))
    if only:
        lines.append(f"\nnot compared (scored in one run only): {', '.join(only)}")
    pa, pb = a.get("perplexity"), b.get("perplexity")
    if pa and pb and pa.get("source") != pb.get("source"):
        lines.append(
            "\nthe two runs were scored on different held-out text: bits per byte not comparable"
        )
    elif pa and pb:
        lines.append(
            f"\nbits per byte: A {pa['bits_per_byte']:.4f}, B {pb['bits_per_byte']:.4f} "
            f"(B - A = {pb['bits_per_byte'] - pa['bits_per_byte']:+.4f})"
        )
    return "\n".join(lines) + "\n"
