"""The whole chain, end to end, through the real command line, on a tiny corpus."""

from __future__ import annotations

import json
import subprocess
import sys

from scratchlm import runs
from scratchlm.infer.generate import generate_text


def test_whole_chain_learns(tmp_path, write_recipe):
    recipe = write_recipe()
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "scratchlm", "run", str(recipe), "--work", str(work), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Next:" in proc.stdout and "scratchlm generate" in proc.stdout
    assert f"--work {work} --set pretrain.max_steps=120 --resume" in proc.stdout

    run = work / "runs" / "tiny"
    evals = [
        r["val_loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    ]
    assert len(evals) == 3
    assert evals[-1] < evals[0] - 0.5, evals  # validation loss falls
    for name in ("config.yaml", "tokenizer.json", "settings.yaml", "manifest.json"):
        assert (run / name).is_file()
    assert (work / "curated" / "report.json").is_file()
    # The final report ends with the built-in sanity tasks, scored on the held-out split.
    assert "--- evaluation" in proc.stdout and "| cloze |" in proc.stdout
    report = json.loads((work / "eval" / "eval.json").read_text())
    assert set(report["tasks"]) == {"cloze", "shuffle"} and report["perplexity"]["bytes"] > 0
    samples = json.loads((work / "samples" / "samples.json").read_text())
    assert samples[0]["prompt"] == "The " and samples[0]["trained"].startswith("The ")

    # Sampling is reproducible from the run folder alone, and the CLI prints the same text.
    loaded = runs.load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    from scratchlm.config import GenerateSettings

    settings = GenerateSettings(max_new_tokens=12, seed=3)
    assert generate_text(model, tok, "The ", settings) == generate_text(
        model, tok, "The ", settings
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scratchlm",
            "generate",
            str(run),
            "--prompt",
            "The ",
            "--set",
            "generate.seed=3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == generate_text(model, tok, "The ", settings).rstrip("\n")


def test_generate_on_a_folder_that_is_not_a_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "scratchlm", "generate", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not a run folder" in out.stderr
