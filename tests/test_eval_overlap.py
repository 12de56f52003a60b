"""`scratchlm eval` warns when a task's items are in the run's training data."""

from __future__ import annotations

import json
import shutil

import torch

from scratchlm import runs
from scratchlm.cli import main
from scratchlm.data.ngrams import normalize_words
from scratchlm.eval.perplexity import shard_documents


def items_file(path, tiny_run):
    """Two items: one copied from the run's training split, one that is not in it."""
    tok = runs.load_model(tiny_run).tokenizer
    seen = tok.decode(next(iter(shard_documents(tiny_run.parent.parent / "tokens", tok, "train"))))
    words = seen.split()[5:25]
    records = [
        {"context": " ".join(words[:15]), "choices": [" ".join(words[15:]), "no"], "answer": 0},
        {"context": "Colourless green ideas sleep furiously while the purple cow sings the "
                    "blues over and over", "choices": ["yes", "no"], "answer": 1},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, " ".join(normalize_words(" ".join(words[:13])))


def test_eval_warns_about_items_in_the_training_split(tiny_run, tmp_path, capsys):
    torch.set_num_threads(1)
    task, ngram = items_file(tmp_path / "task.jsonl", tiny_run)
    assert main(["eval", str(tiny_run), "--task", str(task), "--set", "eval.max_items=0"]) == 0
    captured = capsys.readouterr()
    tokens = tiny_run.parent.parent / "tokens"
    assert f"warning: task {task}: 1 of 2 items share a 13-word sequence with the training data (the train split of {tokens}," in captured.err  # fmt: skip
    result = json.loads((tiny_run / "eval.json").read_text())
    o = result["overlap"]
    assert o["train_data"].startswith(f"the train split of {tokens}") and o["documents"] > 1
    t = o["tasks"][str(task)]
    assert (t["items"], t["overlapping"], t["too_short"]) == (2, 1, 0)
    example = t["examples"][0]
    assert example["id"] == f"{tokens}/train#1"
    assert example["ngram"] == ngram  # the item's first 13 words, normalised
    assert example["item_position"] == result["tasks"][str(task)]["item_ids"][0]
    assert "**Warning**: task" in (tiny_run / "eval.md").read_text()


def test_eval_says_what_it_could_not_check(tiny_run, tmp_path, capsys):
    torch.set_num_threads(1)
    task, _ = items_file(tmp_path / "task.jsonl", tiny_run)
    args = ["eval", str(tiny_run), "--task", str(task), "--set", "eval.max_items=0"]
    assert main(args + ["--set", "eval.train_data=none"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tiny_run / "eval.json").read_text())["overlap"] == {"skipped": "not checked (eval.train_data=none)"}  # fmt: skip
    # a run folder with no pipeline folders beside it
    held = tmp_path / "held.txt"
    held.write_text("The for statement is used to iterate over the elements of a sequence. " * 5)
    alone = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run, alone)
    args = ["eval", str(alone), "--task", str(task), "--text", str(held)]
    assert main(args) == 0
    assert "not checked: no training data beside the run" in capsys.readouterr().out
    # or training text given by hand
    train = tmp_path / "train.txt"
    train.write_text(
        "Colourless green ideas sleep furiously while the purple cow sings the blues over!"
    )
    assert main(args + ["--set", f"eval.train_data={train}"]) == 0
    assert "1 of 2 items share a 13-word sequence with the training data" in capsys.readouterr().err
    # the curated folder, when the token shards are not there
    work = tmp_path / "work"
    shutil.copytree(tiny_run.parent.parent / "curated", work / "curated")
    shutil.copytree(tiny_run, work / "runs" / "tiny")
    assert main(["eval", str(work / "runs" / "tiny"), "--task", str(task), "--text", str(held)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"(the curated documents of {work / 'curated'}," in err and "1 of 2 items" in err
