"""The files the package ships with its config (package data, so an installed package has them too): the schemas
and the model architectures that planning reads before a model is downloaded."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The package is installed as plain files (a wheel, or the checkout's src/), so its data have real paths.
PACKAGE_DATA = Path(str(files(__package__)))
ARCHITECTURES = PACKAGE_DATA / "architectures"


def schema_path(name: str = "config") -> Path:
    """A packaged schema: `config` (the workflow's config) or `voices` (the voice table's rows)."""
    return PACKAGE_DATA / "schemas" / f"{name}.schema.yaml"


def architecture_names() -> list[str]:
    """The packaged model architectures (copies of a hub model's config.json), by name."""
    return sorted(path.stem for path in ARCHITECTURES.glob("*.json"))


def architecture_path(value: str) -> Path:
    """config model.architecture: the name of a packaged architecture, else a path to a config.json."""
    return ARCHITECTURES / f"{value}.json" if value in architecture_names() else Path(value)


def shown_path(path: Path) -> str:
    """A path as the plan prints it: a packaged file by its place in the package, so that output is the same
    wherever the package is installed."""
    path = Path(path)
    if path.is_absolute() and path.is_relative_to(PACKAGE_DATA):
        return f"lalm_slu/config/{path.relative_to(PACKAGE_DATA)}"
    return str(path)
