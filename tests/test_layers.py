"""The house rules of ../shared/DESIGN.md ("Layers"), checked on the parsed source.

A module imports only from its own layer or below, never between siblings of one layer (the
`|` in DESIGN's table), never in a circle, and never our own code inside a function (that is
how circles hide): function-level imports are for heavy optional third-party packages only.
No module is over 420 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "scratchlm"
MAX_LINES = 420

# DESIGN.md's table: (layer, sibling group). Siblings of one group may import each other;
# two groups of one layer may not. The longest prefix decides.
LAYERS = {
    "scratchlm": (0, "ground"),  # the package itself: __version__
    "scratchlm.errors": (0, "ground"),
    "scratchlm.io": (0, "ground"),
    "scratchlm.settings": (0, "ground"),
    "scratchlm.device": (0, "ground"),
    "scratchlm.model": (1, "model"),
    "scratchlm.tokenizer": (1, "tokenizer"),
    "scratchlm.data": (1, "data"),
    "scratchlm.config": (2, "config"),
    "scratchlm.runs": (3, "runs"),
    "scratchlm.infer": (4, "infer"),
    # DESIGN.md has eval beside infer; answer tasks (pass@1, with the calculator) generate
    # through the engine, so evaluation sits one layer above it.
    "scratchlm.eval": (5, "eval"),
    "scratchlm.train": (6, "train"),
    "scratchlm.export": (6, "export"),
    "scratchlm.finetune": (7, "finetune"),
    "scratchlm.pipeline": (8, "pipeline"),
    "scratchlm.cli": (9, "cli"),
    "scratchlm.__main__": (9, "cli"),
}
# Third-party packages that may be imported inside a function: heavy, or optional extras.
HEAVY_OPTIONAL = (
    "datasets", "fasttext", "fastwarc", "ftfy", "lm_eval", "matplotlib", "pyarrow", "ray",
    "rensa", "resiliparse", "torch.distributed", "torch.nn.parallel", "torch.utils.tensorboard",
    "transformers", "uvicorn", "wandb", "zstandard",
)  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_package(root: Path) -> dict[str, str]:
    """{module name: source} for every module under `root`."""
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py"))}


def imports(name: str, source: str, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported name, inside a function?, line) for every import statement of a module;
    `from pkg import mod` names the module pkg.mod when that is one of ours."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        nested = id(node) not in top
        if isinstance(node, ast.Import):
            found += [(a.name, nested, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}:{node.lineno}: write the import absolute"
            base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in modules else base, nested, node.lineno))
    return sorted(set(found), key=lambda f: f[2])


def layer_of(module: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken house rule in a package given as {module: source}."""
    modules = set(sources)
    problems, graph = [], {m: set() for m in modules}
    for name, source in sources.items():
        lines = len(source.splitlines())
        if lines > MAX_LINES:
            problems.append(f"{name}: {lines} lines (at most {MAX_LINES})")
        here = layer_of(name)
        for target, nested, line in imports(name, source, modules):
            where = f"{name}:{line}"
            if not target.startswith("scratchlm"):
                if nested and not target.startswith(HEAVY_OPTIONAL):
                    problems.append(f"{where} imports {target} inside a function")
                continue
            graph[name].add(target)
            if nested:
                problems.append(f"{where} imports {target} inside a function")
            there = layer_of(target)
            if there[0] > here[0]:
                problems.append(
                    f"{where} imports {target} from a higher layer (L{there[0]} > L{here[0]})"
                )
            elif there[0] == here[0] and there[1] != here[1]:
                problems.append(f"{where} imports {target}, a sibling of layer L{here[0]}")
    for cycle in _cycles(graph):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def test_the_package_keeps_the_house_rules():
    assert violations(read_package(PACKAGE)) == []


def test_every_module_has_a_layer():
    for name in read_package(PACKAGE):
        assert layer_of(name) in LAYERS.values(), name


# --------------------------------------------------------------------------- the checker itself


def _package(**modules: str) -> dict[str, str]:
    return {f"scratchlm.{name}": source for name, source in modules.items()}


def test_the_circle_of_the_old_layout_is_caught():
    """The eight-module circle the house issue found, hidden in function-level imports."""
    old = _package(
        **{
            "train.checkpoint": "def load():\n    from scratchlm.export.hf import import_hf\n",
            "export.hf": "def load():\n    from scratchlm.finetune.classify import load_classifier\n",
            "finetune.classify": "from scratchlm.finetune.loop import fit\n",
            "finetune.loop": "from scratchlm.train.loop import autocast_for\n",
            "train.loop": "def hook():\n    from scratchlm.eval.evaluate import hook_tasks\n",
            "eval.evaluate": "def load():\n    from scratchlm.train.checkpoint import load_model\n",
        }
    )
    found = "\n".join(violations(old))
    assert "import cycle: scratchlm.eval.evaluate -> scratchlm.export.hf" in found
    assert "scratchlm.train.checkpoint:2 imports scratchlm.export.hf inside a function" in found
    assert "scratchlm.eval.evaluate:2 imports scratchlm.train.checkpoint" in found
    assert "from a higher layer" in found


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ({"infer.server": "from scratchlm.train.loop import x\n"}, "from a higher layer"),
        ({"model.gpt": "from scratchlm.config import ModelConfig\n"}, "from a higher layer"),
        ({"export.a": "from scratchlm.train import loop\n"}, "a sibling of layer L6"),
        ({"data.a": "from scratchlm.tokenizer.tokenizer import x\n"}, "a sibling of layer L1"),
        ({"data.a": "import scratchlm.data.b\n", "data.b": "import scratchlm.data.a\n"}, "cycle"),
        ({"data.a": "def f():\n    import yaml\n"}, "imports yaml inside a function"),
        ({"data.a": "x = 1\n" * (MAX_LINES + 1)}, "lines (at most"),
    ],
)
def test_each_rule_is_enforced(modules, expected):
    assert any(expected in v for v in violations(_package(**modules)))


def test_allowed_imports_pass():
    ok = _package(
        **{
            "runs": "from scratchlm.config import Recipe\nfrom scratchlm.model.gpt import GPT\n",
            "config": "from scratchlm.model.config import ModelConfig\n",
            "model.config": "from scratchlm.settings import setting\n",
            "model.gpt": "from scratchlm.model.config import ModelConfig\n",
            "settings": "from scratchlm.errors import SettingsError\n",
            "errors": "",
            "data.report": "def plot():\n    import matplotlib\n",
        }
    )
    assert violations(ok) == []
