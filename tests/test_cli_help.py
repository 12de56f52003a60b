"""The first thing a newcomer types: `scratchlm`, `scratchlm --help` and every command's
`--help` work, and the settings they list are the values the command will use."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from scratchlm.cli import PREFIX_COMMANDS, build_parser, main


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list:
    """Every command and sub-command the parser knows, walked from the parser itself so that
    a command added later is covered too."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


COMMANDS = command_paths(build_parser()) + [tuple(c) for c in PREFIX_COMMANDS]


def test_the_walk_finds_every_command():
    names = {" ".join(c) for c in COMMANDS}
    for command in (
        "run", "curate", "tokenize", "pretrain", "plan", "eval", "generate", "chat", "serve",
        "export", "import", "finetune", "classify", "tokenizer train", "tokenizer encode",
        "tokenizer export", "tokenizer import", "curate train-quality",
    ):  # fmt: skip
        assert command in names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "scratchlm")
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scratchlm") and len(out.splitlines()) > 3


def test_help_as_a_module_and_the_bare_command_list_the_commands():
    for args in (["--help"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        for command in ("run", "pretrain", "finetune", "generate", "serve", "eval", "tokenizer"):
            assert re.search(rf"\n    {command}\s", proc.stdout), proc.stdout


def test_a_group_without_its_action_lists_the_actions(capsys):
    assert main(["tokenizer"]) == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("train", "encode", "export", "import"))


def test_help_shows_the_values_of_the_recipe_it_will_use(capsys):
    """The demo recipe is what runs without a recipe, so its values are what --help shows."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "the values of the demo recipe" in out
    assert "curate.sources = ['builtin:shakespeare']" in out
    assert "pretrain.optimizer = 'muon'" in out and "pretrain.max_steps = 600" in out
    assert "parallel.strategy = " in out  # pretraining's layout settings are listed too
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "a run folder's own, from its config.yaml" in capsys.readouterr().out
