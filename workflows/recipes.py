"""Named recipes shipped with the package, and YAML recipes given by path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from any2capins.annotators import all_annotators
from any2capins.pipeline.recipe import RecipeError, ResolvedRecipe, load_recipe_file, resolve_recipe


def shipped_recipes() -> list[str]:
    folder = resources.files("any2capins.workflows") / "recipes"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_recipe(name_or_path: str) -> ResolvedRecipe:
    """A shipped recipe by name (``demo``) or a YAML file by path, validated."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.exists():
            raise RecipeError(f"recipe file {path} does not exist")
        data: dict[str, Any] = load_recipe_file(path)
    else:
        resource = resources.files("any2capins.workflows") / "recipes" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise RecipeError(
                f"unknown recipe {name_or_path!r}; shipped: {', '.join(shipped_recipes())}, "
                "or give a path to a YAML file"
            )
        data = yaml.safe_load(resource.read_text())
    return resolve_recipe(data, all_annotators())
