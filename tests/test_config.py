from __future__ import annotations

import subprocess
import sys

import pytest

from scratchlm.config import Recipe, SettingsError, build, load_recipe


def test_demo_recipe_loads_and_validates():
    recipe = load_recipe()
    assert isinstance(recipe, Recipe)
    assert recipe.name == "demo"
    assert recipe.curate.sources == ["builtin:shakespeare"]


def test_overrides_are_typed():
    r = load_recipe(
        None,
        [
            "model.n_layer=6",
            "pretrain.lr=1e-3",
            "curate.fix_mojibake=false",
            "curate.sources=[a.txt, b.jsonl]",
            "finetune.system=tools: calculator",  # YAML would read a mapping: it is text
        ],
    )
    assert r.model.n_layer == 6
    assert r.finetune.system == "tools: calculator"
    assert r.pretrain.lr == pytest.approx(1e-3) and isinstance(r.pretrain.lr, float)
    assert r.curate.fix_mojibake is False
    assert r.curate.sources == ["a.txt", "b.jsonl"]


def test_a_preset_on_the_command_line_sets_its_keys_over_the_recipes():
    from scratchlm.config import MODEL_PRESETS

    tiny = MODEL_PRESETS["llama-tiny"]
    r = load_recipe(None, ["model.preset=llama-tiny"]).model  # the demo writes its own shape
    assert (r.n_embd, r.block_size, r.n_kv_head) == (tiny["n_embd"], tiny["block_size"], 2)
    assert r.n_embd != load_recipe().model.n_embd
    # keys given on the command line beside it still win, whatever their order
    r = load_recipe(None, ["model.block_size=64", "model.preset=llama-tiny"]).model
    assert r.block_size == 64 and r.n_embd == tiny["n_embd"]
    # inside a recipe, the keys written beside a preset win (gpt2-124m sets block_size)
    assert load_recipe("gpt2-124m").model.n_embd == MODEL_PRESETS["gpt2-124m"]["n_embd"]


def test_single_value_for_a_list_becomes_a_list_of_one():
    assert load_recipe(None, ["curate.sources=corpus.txt"]).curate.sources == ["corpus.txt"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.n_layer=abc", ["model.n_layer", "'abc'", "an integer >= 1"]),
        ("model.n_layer=2.5", ["model.n_layer", "2.5", "an integer"]),
        ("model.n_layer=0", ["model.n_layer", "0", ">= 1"]),
        ("pretrain.lr=fast", ["pretrain.lr", "'fast'", "a finite number"]),
        ("curate.fix_mojibake=maybe", ["curate.fix_mojibake", "'maybe'", "true or false"]),
        ("tokenizer.vocab_size=100", ["tokenizer.vocab_size", "100", "from 257 to 131072"]),
        ("tokenize.val_fraction=0.9", ["tokenize.val_fraction", "0.9", "from 0.0 to 0.5"]),
        ("pretrain.device=tpu", ["pretrain.device", "'tpu'", "one of auto, cpu, cuda, mps"]),
        ("curate.sources={a: 1}", ["curate.sources", "a list of strings"]),
        ("model.n_lyer=4", ["unknown setting model.n_lyer", "did you mean model.n_layer?"]),
        ("modle.n_layer=4", ["unknown setting modle", "did you mean model?"]),
        ("model.n_embd=130", ["n_embd=130", "n_head=4"]),
        ("model.n_layer", ["model.n_layer", "KEY=VALUE"]),
        ("name.sub=1", ["name.sub", "not a section"]),
        ("tokenizer.special_tokens=[<a>]", ["special_tokens must include <|endoftext|>"]),
    ],
)
def test_every_kind_of_bad_setting_is_one_clear_line(override, words):
    with pytest.raises(SettingsError) as err:
        load_recipe(None, [override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  n_layer: [1,\n")
    with pytest.raises(SettingsError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_recipe(str(path))


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="must be a mapping"):
        load_recipe(str(path))


def test_unknown_recipe_lists_builtins():
    with pytest.raises(SettingsError, match="built-in recipe.*demo"):
        load_recipe("no-such-recipe")


def test_build_rejects_a_section_that_is_not_a_mapping():
    with pytest.raises(SettingsError, match="model=3"):
        build(Recipe, {"model": 3})


def test_cli_rejects_bad_setting_before_any_stage_runs(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scratchlm",
            "run",
            "--work",
            str(work),
            "--set",
            "model.n_layer=abc",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.n_layer" in lines[0] and "'abc'" in lines[0]
    assert not work.exists()


@pytest.mark.parametrize(
    "command",
    [["run"], ["curate"], ["tokenizer", "train"], ["tokenize"], ["pretrain"], ["generate"]],
)
def test_every_command_has_help_with_its_settings(command):
    from scratchlm.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command, "--help"])
    assert exit_.value.code == 0


def test_help_lists_settings(capsys):
    from scratchlm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "model.n_layer" in out and "pretrain.lr" in out and "curate." not in out
