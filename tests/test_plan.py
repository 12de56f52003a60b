from __future__ import annotations

import pytest
import yaml

from scratchlm.cli import main
from scratchlm.config import Recipe, recipe_from_dict
from scratchlm.train.plan import plan


def test_plan_is_compute_optimal():
    n = 124e6
    p = plan(flops=6 * 20 * n * n)  # the budget whose optimum is 124M parameters
    assert p["tokens"] == 20 * p["params"]
    assert 0.75 < p["params"] / n < 1.33  # rounded to a whole number of layers
    assert p["steps"] == round(p["tokens"] / 524288)


def test_plan_from_gpu_hours():
    p = plan(hours=2, gpus=8, gpu="H100", mfu=0.5)
    assert p["flops"] == pytest.approx(2 * 3600 * 8 * 989e12 * 0.5)
    with pytest.raises(ValueError, match="unknown GPU"):
        plan(hours=1, gpu="TPU")


def test_plan_cli_prints_a_recipe_that_validates(capsys):
    assert main(["plan", "--flops", "1e18"]) == 0
    out = capsys.readouterr().out
    sections = yaml.safe_load(out.split("add curate/tokenizer for your data):\n", 1)[1])
    recipe = recipe_from_dict(sections)
    assert (
        isinstance(recipe, Recipe)
        and recipe.model.norm == "rmsnorm"
        and recipe.pretrain.max_steps > 0
    )


def test_plan_prints_every_model_key_it_means(capsys):
    """No preset beside other dimensions, and no 0 that stands for something else."""
    assert main(["plan", "--hours", "2", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    model = yaml.safe_load(out.split("add curate/tokenizer for your data):\n", 1)[1])["model"]
    assert "preset" not in model
    assert not [k for k, v in model.items() if v == 0 and not isinstance(v, bool)], model
    cfg = recipe_from_dict({"model": model}).model
    params = 12 * cfg.n_layer * cfg.n_embd**2  # the count the plan's budget is made of
    assert f"{params / 1e6:,.1f}M non-embedding parameters" in out
