"""What the command modules share: the recipe arguments, `--set`, settings help, result lines."""

from __future__ import annotations

import argparse
import os

from scratchlm import runs
from scratchlm.config import (
    GenerateSettings,
    Recipe,
    builtin_recipes,
    describe_section,
    load_recipe,
)
from scratchlm.pipeline import StageResult

FORMATTER = argparse.RawDescriptionHelpFormatter


# Where the values of a command's settings come from, for the first line of its --help.
FROM_RECIPE = (
    "settings: the values of the demo recipe, used when no recipe is given "
    "(override with --set KEY=VALUE)"
)
FROM_RUN = (
    "settings: a run folder's own, from its config.yaml; shown here: the defaults, which an "
    "HF folder or a run made without this section gets (override with --set KEY=VALUE)"
)


def settings_help(sections: tuple[str, ...], recipe: Recipe | None = None, note: str = "") -> str:
    """The epilog of a command: every setting of its sections with the value the command will
    use (the `recipe`'s, for commands that take one) and its help."""
    lines = [
        note or ("settings (override with --set KEY=VALUE):" if recipe is None else FROM_RECIPE)
    ]
    for sec in sections:
        settings_class = Recipe.__dataclass_fields__[sec].default_factory
        values = getattr(recipe, sec) if recipe is not None else None
        lines += describe_section(settings_class, f"{sec}.", values)  # type: ignore[arg-type]
    return "\n".join(lines)


def default_recipe() -> Recipe:
    """The recipe a command uses when none is named (for --help's values)."""
    return load_recipe(None)


def add_set(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"override a setting, e.g. {example} (repeatable)",
    )


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        nargs="?",
        help=f"recipe YAML file or built-in name ({', '.join(builtin_recipes())}); default: demo",
    )
    p.add_argument("--work", metavar="DIR", help="work folder (default: work/<recipe name>)")
    add_set(p, "model.n_layer=6")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="pretraining continues from the run's latest checkpoint (pretrain.resume=auto)",
    )


def recipe_of(args: argparse.Namespace) -> Recipe:
    """The recipe a stage command names, with its --set lines; validated before any work."""
    # torchrun --max-restarts starts the workers again after a failure: they resume.
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    resume = ["pretrain.resume=auto"] if args.resume or restarted else []
    return load_recipe(args.recipe, args.overrides + resume)


def generate_settings(folder: str, overrides: list[str], command: str) -> GenerateSettings:
    """The folder's generate settings (an HF folder: the defaults), with --set applied."""
    return runs.run_settings(folder, "generate", overrides, f"scratchlm {command}")


def print_result(result: StageResult) -> None:
    status = "ran" if result.ran else "skipped"
    print(
        f"  {result.stage:<10} {status:<8} {result.seconds:7.1f} s  {result.out}  "
        f"{result.summary.headline()}",
        flush=True,
    )
    if result.note:
        print(f"  {'':<10} {result.note}", flush=True)
