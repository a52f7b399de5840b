"""Lay out the checkout's top-level folders as an ``actrec/`` package tree of symlinks.

The packages live in top-level folders mapped into ``actrec.*`` by pyproject's ``[tool.setuptools.package-dir]``
(``viewer/`` is ``actrec.viewer``). An installed copy has that layout; an editable install maps it with an import
hook that static tools cannot follow. The type checker (``mypy``) and the docs' API reference (mkdocstrings) read
source from disk, so they are given this tree, which has the installed layout and points at the real files::

    python tools/package_tree.py build/api-src     # then: MYPYPATH=build/api-src mypy -p actrec
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``{"actrec.viewer": ROOT / "viewer", ...}`` from pyproject (one ``"name" = "folder"`` entry a line)."""
    text = (root / "pyproject.toml").read_text()
    table = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {name: root / folder for name, folder in re.findall(r'^"(actrec[\w.]*)"\s*=\s*"([^"]+)"', table, re.M)}


def lay_out(tree: Path, root: Path = ROOT) -> Path:
    """Create (or complete) the symlink tree under ``tree``; returns ``tree``."""
    for package, folder in package_dirs(root).items():
        link = tree.joinpath(*package.split("."))
        if package == "actrec":  # the top: its files, not the folder (the subpackages live beside them)
            link.mkdir(parents=True, exist_ok=True)
            for item in folder.iterdir():
                if item.is_file() and not (link / item.name).is_symlink():
                    (link / item.name).symlink_to(item)
            continue
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(folder, target_is_directory=True)
    return tree


if __name__ == "__main__":
    print(lay_out(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "api-src"))
