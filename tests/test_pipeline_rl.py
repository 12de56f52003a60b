"""The pipeline's third phase: an `rl` section adds GRPO after fine-tuning, and `eval.runs`
scores every phase's run, with and without the calculator."""

from __future__ import annotations

import json

from conftest import tiny_recipe

from scratchlm.eval.report import EvalSummary
from scratchlm.pipeline import Workspace, run_pipeline


def arithmetic_recipe(**rl):
    return tiny_recipe(
        curate={"sources": ["builtin:arithmetic"], "steps": ["normalize"], "min_words": 1,
                "max_docs": 4},
        tokenizer={"vocab_size": 300, "pattern": "gpt4-digits"},
        model={"block_size": 64},
        pretrain={"max_steps": 8, "eval_every": 8},
        finetune={"task": "sft", "data": "builtin:arithmetic-tools", "max_steps": 4,
                  "batch_size": 8, "eval_every": 4, "threads": 1},
        rl={"data": "builtin:arithmetic:1:+", "system": "tools: calculator", "max_steps": 3,
            "batch_size": 2, "group_size": 2, "eval_every": 3, "eval_prompts": 8,
            "max_new_tokens": 8, "threads": 1} | rl,
        eval={"tasks": ["builtin:arithmetic:1:+"], "runs": ["pretrain", "finetune", "rl"],
              "max_items": 8, "max_tokens": 500},
    )  # fmt: skip


def test_rl_runs_on_the_fine_tuned_run_and_eval_scores_each_phase(tmp_path):
    recipe = arithmetic_recipe()
    ws = Workspace.for_recipe(recipe, tmp_path / "work")
    results = run_pipeline(recipe, ws, progress=False)
    assert [r.stage for r in results if r.ran] == [
        "curate", "tokenizer", "tokenize", "pretrain", "finetune", "rl", "sample", "eval",
    ]  # fmt: skip
    rl_run = ws.out("rl")
    summary = json.loads((rl_run / "summary.json").read_text())
    assert summary["task"] == "grpo" and summary["steps"] == 3
    assert summary["base"]["checkpoint"].startswith(str(ws.out("finetune")))
    steps = [json.loads(line) for line in (rl_run / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "reply_tokens", "kl"} <= set(steps[1])
    assert [s["step"] for s in steps if "eval" in s] == [0, 3]

    ev = results[-1].summary
    assert isinstance(ev, EvalSummary)
    phases = [ev.as_one(), *ev.others]
    assert [p.phase for p in phases] == ["pretrain", "finetune", "rl"]
    # A base model answers without the calculator; the chat-tuned ones, with and without it.
    assert list(phases[0].answers["builtin:arithmetic:1:+"]) == ["without tool"]
    for p in phases[1:]:
        assert list(p.answers["builtin:arithmetic:1:+"]) == ["without tool", "with tool"]
    assert "with tool" in ev.headline() and "rl:" in ev.headline()
    report = (ws.root / "eval" / "eval.md").read_text()
    side_by_side = report.split("## ")[0].splitlines()  # the three runs in one table
    assert sum(line.startswith("| --- ") for line in side_by_side) == 1
    assert [line.split(" | ")[0] for line in side_by_side if " | with tool" in line] == ["| finetune", "| rl"]  # fmt: skip

    # Only the rl stage and the evaluation depend on the rl settings.
    again = run_pipeline(arithmetic_recipe(max_steps=4), ws, progress=False)
    assert [r.stage for r in again if r.ran] == ["rl", "eval"]
