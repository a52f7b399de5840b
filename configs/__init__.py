"""The shipped experiments, installed with actrec: ``actrec train --config <name>`` takes any of them by name.

Each ``<name>.yaml`` here is a complete LightningCLI config with every non-obvious value commented.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["config_names", "config_path"]


def config_names() -> list[str]:
    """Names of the shipped configs, e.g. ``["article", "fashion", "quickstart"]``."""
    return sorted(
        entry.name.removesuffix(".yaml") for entry in files(__name__).iterdir() if entry.name.endswith(".yaml")
    )


def config_path(name: str) -> Path | None:
    """The installed file of shipped config ``name`` (``fashion`` or ``fashion.yaml``), or ``None``."""
    stem = name.removesuffix(".yaml")
    if stem not in config_names():
        return None
    return Path(str(files(__name__) / f"{stem}.yaml"))
