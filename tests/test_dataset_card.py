"""The curated folder's dataset card, and decontamination in the pipeline's stage cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe

from scratchlm.data.curate import curate, iter_curated
from scratchlm.data.settings import CurateSettings
from scratchlm.errors import SettingsError
from scratchlm.pipeline import Workspace, is_fresh, read_manifest, run_stage, stage_key
from scratchlm.pipeline.cache import decontamination_inputs
from scratchlm.tokenizer.shards import load_meta

ITEM = "Which gas do green plants take in from the air to build sugars during photosynthesis"


def sources(tmp_path: Path) -> Path:
    from pydoc_data.topics import topics

    src = tmp_path / "docs.jsonl"
    texts = list(topics.values())[:40]
    texts[5] = texts[5] + "\n\n" + ITEM + " in bright sunlight?"  # one document holds an item
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return src


@pytest.mark.parametrize("fmt, builder", [("jsonl.zst", "json"), ("parquet", "parquet")])
def test_datasets_reads_the_shards_as_they_are(tmp_path, fmt, builder):
    import datasets
    from huggingface_hub import DatasetCard

    out = tmp_path / "curated"
    s = CurateSettings(sources=[str(sources(tmp_path)), "builtin:pydoc"], output_format=fmt,
                       shard_docs=30, license="cc-by-4.0", languages=["en", "fr"])  # fmt: skip
    report = curate(s, out, progress=False)
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.language == ["en", "fr"]
    assert card.data.size_categories == ["n<1K"]
    glob = f"docs_*.{fmt}"
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": glob}]}]  # fmt: skip
    ours = list(iter_curated(out))
    assert len(ours) == report["documents_out"] > 60 and len(report["shards"]) > 1
    cache = tmp_path / "hf-cache"
    folder = datasets.load_dataset(str(out), split="train", cache_dir=str(cache))
    files = datasets.load_dataset(builder, data_files=str(out / glob), split="train", cache_dir=str(cache))  # fmt: skip
    for ds in (folder, files):
        assert ds["id"] == [d["id"] for d in ours] and ds["text"] == [d["text"] for d in ours]
    meta = folder[-1]["meta"]  # jsonl: an object; parquet: the same object as JSON text
    assert (json.loads(meta) if fmt == "parquet" else meta) == ours[-1]["meta"]
    # Curated again into the same folder, fewer documents: `datasets` must not serve its cache
    # (it keys a folder by the card's dataset_info, which holds the sizes)
    for shard in out.glob("docs_*"):
        shard.unlink()
    s.max_docs = 50
    smaller = curate(s, out, progress=False)["documents_out"]
    assert smaller < len(ours)
    assert len(datasets.load_dataset(str(out), split="train", cache_dir=str(cache))) == smaller


def test_the_card_says_what_each_step_did(tmp_path):
    item = tmp_path / "task.jsonl"
    item.write_text(json.dumps({"context": ITEM, "choices": ["in bright sunlight?", "no"], "answer": 0}) + "\n")  # fmt: skip
    steps = ["normalize", "length", "exact_dedup", "decontaminate"]
    s = CurateSettings(sources=[str(sources(tmp_path))], steps=steps, min_words=30,
                       decontaminate_against=[str(item)])  # fmt: skip
    report = curate(s, tmp_path / "out", progress=False)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense: unknown\n")
    for line in (
        f"| `{tmp_path / 'docs.jsonl'}` | 40 | {report['documents_out']} |",
        f"| length | min_words=30, max_words=0 | 40 | {40 - report['dropped']['too_few_words']['count']} |",  # fmt: skip
        "| decontaminate | decontaminate_ngram=13, decontaminate_mode=drop",
        "- exact_dedup: 0 of ",
        f"| `{item}` | 1 | 0 | 1 | 1 |",
        'shares "which gas do green plants take in from the air to build sugars" with item 1',
    ):
        assert line in card, line
    assert "## Tokens" not in card
    with pytest.raises(SettingsError, match="curate.license='CC BY'"):
        CurateSettings(license="CC BY")


def test_pipeline_decontaminates_against_eval_files_and_caches_on_their_content(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"context": ITEM, "choices": ["in bright sunlight?", "no"], "answer": 0}) + "\n")  # fmt: skip
    held = tmp_path / "held.txt"
    held.write_text("Some held-out text of another source.")
    recipe = tiny_recipe(
        curate={
            "sources": [str(sources(tmp_path))],
            "steps": ["normalize", "length", "decontaminate"],
            "max_docs": 0,
        },  # fmt: skip
        eval={"tasks": ["cloze", str(task)], "heldout": str(held)},
    )
    assert decontamination_inputs(recipe) == [str(task), str(held)]
    ws = Workspace(tmp_path / "work", "tiny")
    run_stage("curate", recipe, ws, progress=False)
    report = json.loads((ws.out("curate") / "report.json").read_text())
    assert set(report["decontamination"]["benchmarks"]) == {str(task), str(held)}
    assert report["dropped"]["contaminated"]["count"] == 1
    card = ws.out("curate") / "README.md"
    assert "## Tokens" not in card.read_text()
    # tokenize writes its counts into the card; the curate stage stays fresh all the same
    run_stage("tokenizer", recipe, ws, progress=False)
    run_stage("tokenize", recipe, ws, progress=False)
    meta = load_meta(ws.out("tokenize"))
    text = card.read_text()
    assert "## Tokens" in text and f"| train | {meta['documents']['train']:,} | {meta['tokens']['train']:,} |" in text  # fmt: skip
    assert "README.md" not in read_manifest(ws.out("curate"))["outputs"]
    assert is_fresh("curate", stage_key("curate", recipe, ws), ws)
    assert not run_stage("curate", recipe, ws, force=False, progress=False).ran
    # a forced curate with the same output keeps the (still true) token counts
    run_stage("curate", recipe, ws, progress=False)
    assert "## Tokens" in card.read_text()
    # an edited benchmark file changes the stage's key: curation runs again
    key = stage_key("curate", recipe, ws)
    task.write_text(json.dumps({"context": "other words", "choices": ["a", "b"], "answer": 0}) + "\n")  # fmt: skip
    assert stage_key("curate", recipe, ws) != key
    result = run_stage("curate", recipe, ws, force=False, progress=False)
    assert result.ran and "contaminated" not in result.summary.dropped
    assert "## Tokens" not in card.read_text()  # the shards changed: the old counts are gone
    # without the step, eval files are not curation's business
    plain = tiny_recipe(eval={"tasks": [str(task)]})
    assert decontamination_inputs(plain) == []
    binary = tiny_recipe(curate={"steps": ["decontaminate"]}, eval={"tasks": ["cloze"], "heldout": str(ws.out("tokenize") / "val_000.bin")})  # fmt: skip
    assert decontamination_inputs(binary) == []
