"""Has the model seen a task's items in training? Their n-grams against the run's training text.

`scratchlm eval` looks for every n-gram (13 words, as curation's decontaminate step and GPT-3)
of every scored item in the text the run was trained on, with the same index
(data/decontaminate.py), and warns when items are there: their scores may be memory. Which
text, by eval.train_data:

    ""     the pipeline's folders beside the run (<work>/runs/NAME): the train split of
           <work>/tokens decoded with the run's tokenizer - exactly what pretraining read -
           else the documents of <work>/curated (its validation split included)
    none   no check
    PATH   a tokens folder (its train split), a curated folder, or any curation source
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from scratchlm.data.benchmarks import Benchmark
from scratchlm.data.curate import iter_curated, shard_files
from scratchlm.data.decontaminate import Decontamination
from scratchlm.data.sources import iter_documents
from scratchlm.errors import StageError
from scratchlm.eval.choice import Item
from scratchlm.eval.perplexity import shard_documents
from scratchlm.tokenizer.tokenizer import Tokenizer

CHUNK = 64


@dataclass
class TrainingText:
    """Where the training text is, said in words for the report, and its documents."""

    label: str
    documents: Any  # () -> Iterator[(id, text)]


def _tokens(folder: Path, tok: Tokenizer) -> TrainingText:
    def documents() -> Iterator[tuple[str, str]]:
        for k, ids in enumerate(shard_documents(folder, tok, "train"), start=1):
            yield f"{folder}/train#{k}", tok.decode(ids)

    return TrainingText(f"the train split of {folder}, decoded with the run's tokenizer", documents)


def _curated(folder: Path) -> TrainingText:
    def documents() -> Iterator[tuple[str, str]]:
        for doc in iter_curated(folder):
            yield doc["id"], doc["text"]

    return TrainingText(f"the curated documents of {folder}, validation split included", documents)


def _sources(spec: str) -> TrainingText:
    def documents() -> Iterator[tuple[str, str]]:
        for doc in iter_documents([spec]):
            yield doc.id, doc.text

    return TrainingText(spec, documents)


def training_text(run_dir: Path, setting: str, tok: Tokenizer) -> TrainingText | str:
    """The run's training text, or why there is none to check (a sentence)."""
    if setting == "none":
        return "not checked (eval.train_data=none)"
    if setting:
        path = Path(setting)
        if (path / "meta.json").is_file():
            return _tokens(path, tok)
        if path.is_dir() and shard_files(path):
            return _curated(path)
        return _sources(setting)
    work = run_dir.parent.parent
    if (work / "tokens" / "meta.json").is_file():
        try:
            next(iter(shard_documents(work / "tokens", tok, "train")), None)
            return _tokens(work / "tokens", tok)
        except StageError:  # made with another tokenizer: not this run's training data
            return f"not checked: {work / 'tokens'} was made with another tokenizer than the run's"
    if (work / "curated").is_dir() and shard_files(work / "curated"):
        return _curated(work / "curated")
    return "not checked: no training data beside the run (set eval.train_data to a folder or file)"


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def overlap(tasks: dict[str, list[Item]], train: TrainingText, n: int) -> dict[str, Any]:
    """Per task: how many of its items share an n-gram with the training text, with examples."""
    benches = [Benchmark(name, [it.own_text for it in items], [it.id for it in items]) for name, items in tasks.items()]  # fmt: skip
    found = Decontamination(benches, n)
    documents = 0
    for chunk in _chunks(train.documents(), CHUNK):
        documents += len(chunk)
        for (doc_id, _), matches in zip(
            chunk, found.index.scan([t for _, t in chunk]), strict=True
        ):
            if matches:
                found.record(doc_id, matches)
    report = found.report()["benchmarks"]
    return {
        "train_data": train.label,
        "documents": documents,
        "ngram": n,
        "tasks": {
            name: {
                "items": b["items"],
                "overlapping": b["items_touched"],
                "too_short": b["items_too_short"],
                "training_documents": b["documents"],
                "examples": b["examples"],
            }
            for name, b in report.items()
        },
    }
