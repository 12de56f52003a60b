"""Every recipe a user is shown must load: the built-in recipes, the recipe blocks of the README
and the guide, and every `--set` they print, validated against today's settings without
running anything. A renamed setting then fails here, not in a user's first command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from scratchlm.config import Recipe, builtin_recipes, load_recipe, recipe_from_dict
from scratchlm.errors import SettingsError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
SECTIONS = set(Recipe.__dataclass_fields__)
# --set VALUE, VALUE quoted or bare (a bare one ends at a space or a closing backtick)
SET = re.compile(r"""--set\s+(?:'([^']*)'|"([^"]*)"|([^\s`]+))""")
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def shown_overrides() -> list[tuple[str, str, str | None]]:
    """(where, KEY=VALUE, the error the doc shows right below it or None) for every --set."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            shown_error = None
            if n + 1 < len(lines) and lines[n + 1].startswith("scratchlm: error: "):
                shown_error = lines[n + 1].removeprefix("scratchlm: error: ")
            for m in SET.finditer(line):
                item = next(g for g in m.groups() if g is not None)
                if item.split("=")[0].isupper():  # KEY=VALUE: a placeholder
                    continue
                found.append((f"{doc_id(path)}:{n + 1}", item, shown_error))
    return found


def shown_recipes() -> list[tuple[str, dict]]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in YAML_BLOCK.finditer(text):
            data = yaml.safe_load(m.group(1))
            if isinstance(data, dict) and set(data) <= SECTIONS:
                line = text[: m.start()].count("\n") + 1
                found.append((f"{doc_id(path)}:{line}", data))
    return found


@pytest.mark.parametrize("name", builtin_recipes())
def test_every_builtin_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name


def test_the_docs_show_overrides_and_recipes():
    # The extraction itself must find what is there, or the tests below prove nothing.
    assert len(shown_overrides()) >= 30
    assert len(shown_recipes()) >= 2


@pytest.mark.parametrize("where, item, shown_error", shown_overrides(), ids=lambda v: str(v))
def test_every_override_in_the_docs_is_a_valid_setting(where, item, shown_error):
    if shown_error is None:
        load_recipe(None, [item])
    else:  # an example of the error message: the doc must show the real one
        with pytest.raises(SettingsError) as e:
            load_recipe(None, [item])
        assert str(e.value) == shown_error, where


@pytest.mark.parametrize("where, data", shown_recipes(), ids=lambda v: str(v))
def test_every_recipe_block_in_the_docs_is_valid(where, data):
    recipe_from_dict(data)
    if data.get("name") in builtin_recipes():  # shown as a built-in: it must say what it holds
        builtin = load_recipe(data["name"]).to_dict()
        for section, values in data.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    assert builtin[section][key] == value, f"{where}: {section}.{key}"
