"""The import contract, read from the source: no package imports another's private names, no package cycles.

Packages are the top-level folders pyproject's ``[tool.setuptools.package-dir]`` maps to ``actrec.<name>``.
Every ``import`` and ``from ... import`` is counted, at module level or inside a function alike: a lazy
import is still a dependency. The contract:

- no package imports another package's ``_private`` module or ``_private`` name (make it public where
  it lives, or move it to the package that owns the concept);
- the package graph has no cycle;
- ``cli`` imports the commands and no package imports ``cli``;
- the read side layers one way: ``recording`` imports only ``store``, ``runs`` and ``errors``;
- ``errors`` and ``names`` import nothing of actrec (``names`` holds the constants probe, store, runs
  and recording share, each written once); ``probe`` imports neither h5py nor Lightning; the viewer,
  recording and store never import Lightning.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = ("pytorch_lightning", "lightning")


def _packages() -> dict[str, Path]:
    """``{package name: folder}`` from pyproject, e.g. ``{"runs": ROOT / "runfolder"}``."""
    # A regular expression rather than tomllib, which Python 3.10 lacks: the table is one `"actrec.x" = "dir"` a line.
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {name: ROOT / folder for name, folder in re.findall(r'^"actrec\.([a-z_]+)"\s*=\s*"([^"]+)"', table, re.M)}


@dataclass(frozen=True)
class Import:
    package: str  # the importing package
    path: Path
    line: int
    module: str  # the imported module, absolute
    names: tuple[str, ...]  # the names imported from it (``from m import a, b``)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _imports() -> Iterator[Import]:
    for package, folder in _packages().items():
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    yield Import(package, path, node.lineno, node.module, tuple(alias.name for alias in node.names))
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        yield Import(package, path, node.lineno, alias.name, ())


def _target(module: str) -> str | None:
    """The actrec package ``module`` belongs to, or ``None`` for anything outside actrec."""
    parts = module.split(".")
    return parts[1] if parts[0] == "actrec" and len(parts) > 1 else None


IMPORTS = list(_imports())
EDGES = {(i.package, _target(i.module)) for i in IMPORTS if _target(i.module) not in (None, i.package)}


def test_the_packages_are_found() -> None:
    packages = _packages()
    assert {"recording", "viewer", "store", "runs", "cli", "errors"} <= set(packages)
    assert all(folder.is_dir() for folder in packages.values())
    assert len(IMPORTS) > 100  # the walk reads real source


def test_no_package_imports_another_packages_private_names() -> None:
    private = []
    for item in IMPORTS:
        target = _target(item.module)
        if target in (None, item.package):
            continue
        modules = [part for part in item.module.split(".")[2:] if part.startswith("_")]
        names = [name for name in item.names if name.startswith("_")]
        if modules or names:
            private.append(f"{item.where()}: {item.module} {names or ''}".rstrip())
    assert private == [], "imports of another package's private modules or names:\n" + "\n".join(private)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph[node]:
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_cycles() -> None:  # so that an empty answer below means something
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []


def test_no_import_cycle_among_packages() -> None:
    assert _cycles(EDGES) == []


def test_cli_imports_the_commands_and_nothing_imports_cli() -> None:
    importers = sorted({i.where() for i in IMPORTS if _target(i.module) == "cli" and i.package != "cli"})
    assert importers == []
    commands = {target for source, target in EDGES if source == "cli"}
    assert {"trainer", "viewer", "runs", "dynamics", "compare", "report", "inspection"} <= commands


def test_the_read_side_layers_one_way() -> None:
    assert {target for source, target in EDGES if source == "recording"} <= {"store", "runs", "errors", "names"}
    assert {target for source, target in EDGES if source == "errors"} == set()
    assert {target for source, target in EDGES if source == "names"} == set()
    readers = {source for source, target in EDGES if target == "recording"}
    assert {"viewer", "report", "compare", "dynamics"} <= readers


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("probe", ("h5py", *LIGHTNING)),
        ("viewer", LIGHTNING),
        ("recording", (*LIGHTNING, "torch")),
        ("store", (*LIGHTNING, "torch")),
        ("errors", ("h5py", "torch", *LIGHTNING)),
        ("names", ("h5py", "torch", "numpy", *LIGHTNING)),
    ],
)
def test_packages_stay_off_heavy_dependencies_they_must_not_need(package: str, forbidden: tuple[str, ...]) -> None:
    found = sorted(
        f"{i.where()}: {i.module}"
        for i in IMPORTS
        if i.package == package and re.split(r"\.", i.module)[0] in forbidden
    )
    assert found == []
