"""Small models the package ships (teachers/zoo/<name>/), so demos and tests never download or train them."""
from __future__ import annotations

from pathlib import Path

from teachers.errors import ConfigError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def zoo_path(name: str) -> Path | None:
    """The shipped folder of that name, or None when the package has none."""
    path = ZOO_DIR / name
    return path if path.is_dir() else None


def resolve_model_path(path: str) -> str | Path:
    """`zoo:<name>` is a model the package ships; anything else is a folder or a hub id."""
    if str(path).startswith("zoo:"):
        found = zoo_path(str(path)[4:])
        if found is None:
            raise ConfigError(f"{path}: the package ships no such model")
        return found
    return path
