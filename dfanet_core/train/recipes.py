"""Recipes: plain YAML files whose keys fill an argparse parser's defaults (flags still win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe that is missing or does not fit the parser."""


def parse_with_recipe(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    recipe_dirs: Sequence[os.PathLike | str] = (),
) -> argparse.Namespace:
    """Parse ``argv``; a ``--recipe FILE.yaml`` (or a name looked up in ``recipe_dirs``) first
    fills the parser's defaults (keys are the option names with ``_``), so explicit
    command-line flags still win. The recipe's name lands in ``args.recipe_name``."""
    known, _ = parser.parse_known_args(argv)
    recipe = getattr(known, "recipe", None)
    name = None
    if recipe:
        path = find_recipe(recipe, recipe_dirs)
        parser.set_defaults(**load_recipe(path, parser))
        name = path.stem
    args = parser.parse_args(argv)
    args.recipe_name = name
    return args


def find_recipe(recipe: os.PathLike | str, recipe_dirs: Sequence[os.PathLike | str]) -> Path:
    """A recipe file path, or ``<dir>/<name>[.yaml]`` in the first of ``recipe_dirs`` that has
    it; a missing one is an error listing what exists."""
    path = Path(recipe)
    if path.is_file():
        return path
    folders = [Path(d) for d in recipe_dirs]
    for folder in folders:
        for candidate in (folder / path.name, folder / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    available = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    raise RecipeError(
        f"recipe not found: {path} (nor in {', '.join(map(str, folders)) or 'no folder'}); "
        f"available: {', '.join(available) or 'none'}"
    )


def load_recipe(path: os.PathLike | str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a recipe and check every key is an option of ``parser``."""
    path = Path(path)
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of option: value")
    valid = {a.dest for a in parser._actions} - {"help", "recipe"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise RecipeError(
            f"recipe {path} has unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}"
        )
    return data


def jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments as plain JSON/YAML/weights_only-safe values (paths become strings)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out
