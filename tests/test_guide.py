"""Every ```python block of docs/guide runs, in order, one chapter per test (a shared namespace
per chapter, as a reader pasting them into one session would have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
CHAPTERS = sorted(GUIDE.glob("[0-9][0-9]-*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_guide_has_chapters():
    assert CHAPTERS and all(BLOCK.search(c.read_text()) for c in CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_snippet_runs(chapter, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__guide__"}
    for i, block in enumerate(BLOCK.findall(chapter.read_text()), start=1):
        try:
            exec(compile(block, f"{chapter.name}[{i}]", "exec"), namespace)
        except Exception as e:  # name the snippet that broke
            raise AssertionError(f"{chapter.name}, python block {i} failed: {e!r}") from e
