"""Shared fixtures: a tiny recipe over the Python docs that ship with CPython (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.config import Recipe, recipe_from_dict


def tiny_recipe_dict(**sections) -> dict:
    """A recipe that runs the whole chain in seconds on a CPU."""
    data = {
        "name": "tiny",
        "curate": {"sources": ["builtin:pydoc"], "min_words": 20, "max_docs": 60},
        "tokenizer": {"vocab_size": 320},
        "tokenize": {"val_fraction": 0.1},
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "pretrain": {
            "name": "tiny",
            "max_steps": 60,
            "batch_size": 8,
            "lr": 0.01,
            "warmup_steps": 5,
            "eval_every": 30,
            "eval_batches": 4,
            "threads": 1,
        },
        "generate": {"prompts": ["The "], "max_new_tokens": 12},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def tiny_recipe(**sections) -> Recipe:
    return recipe_from_dict(tiny_recipe_dict(**sections))


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a tiny recipe YAML (with section updates) and return its path."""
    import yaml

    def write(**sections) -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_dict(**sections)))
        return path

    return write


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Curated text, a tokenizer and token shards of the tiny recipe, made once per module (its
    tests train runs into this workspace)."""
    from scratchlm.pipeline import Workspace, run_stage

    ws = Workspace(tmp_path_factory.mktemp("work"), "tiny")
    for stage in ("curate", "tokenizer", "tokenize"):
        run_stage(stage, tiny_recipe(), ws, progress=False)
    return ws


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run folder shared by the generation and serving tests. Its context of
    512 makes a long generation last long enough to be interrupted on purpose."""
    from scratchlm.pipeline import Workspace, run_stage

    ws = Workspace(tmp_path_factory.mktemp("tiny-run"), "tiny")
    recipe = tiny_recipe(model={"block_size": 512}, pretrain={"max_steps": 30, "eval_every": 30})
    for stage in ("curate", "tokenizer", "tokenize", "pretrain"):
        run_stage(stage, recipe, ws, progress=False)
    return ws.out("pretrain")
