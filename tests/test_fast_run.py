"""The fast run, ``pytest -m "not slow"``, still tests every package and every ``actrec`` command.

``slow`` (pyproject's marker) is for what trains a network for more than a few batches or drives long-lived
processes; it may leave a package's or a command's heavy tests out of the fast run, never all of them. Read from
the test sources, so it holds whatever part of the suite is selected:

- every package (the top-level folders pyproject maps to ``actrec.<name>``) is imported by a test module that
  has a test not marked slow (a data package, ``configs``, is named by its folder);
- every ``actrec`` command (read from ``cli/_main.py``'s dispatch) is driven by a test not marked slow, through
  its entry function (``render_main``), ``actrec.cli.main(["render", ...])`` or an ``actrec render`` process; a
  fixture or a module-level helper the test uses counts as the test.

These tests are themselves unmarked, so ``pytest -m "not slow"`` always collects something and never exits 5.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _packages() -> dict[str, str]:
    """``{package: folder}``, e.g. ``{"runs": "runfolder"}``."""
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^"actrec\.([a-z_]+)"\s*=\s*"([^"]+)"', table, re.M))


def _commands() -> dict[str, str]:
    """``{command: entry function}`` from the dispatch: ``if command == "render": from ... import render_main``."""
    tree = ast.parse((ROOT / "cli" / "_main.py").read_text())
    commands = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "command"
            and isinstance(node.test.comparators[0], ast.Constant)
        ):
            name = node.test.comparators[0].value
            entries = [
                alias.name
                for inner in ast.walk(node)
                if isinstance(inner, ast.ImportFrom)
                for alias in inner.names
                if alias.name.endswith("_main")
            ]
            if entries:
                commands[name] = entries[-1]
    return commands


def _is_slow(decorators: list[ast.expr]) -> bool:
    return any("mark.slow" in ast.unparse(d) for d in decorators)


@dataclass
class Module:
    path: Path
    slow: bool  # pytestmark includes slow
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)  # module-level helpers and fixtures
    fast_tests: list[ast.FunctionDef] = field(default_factory=list)
    packages: set[str] = field(default_factory=set)  # actrec packages imported (or folders named) in the module

    def reach(self, test: ast.FunctionDef, shared: dict[str, ast.FunctionDef]) -> list[ast.FunctionDef]:
        """The test and every module-level function or fixture it uses, transitively (conftest's included)."""
        seen: dict[str, ast.FunctionDef] = {}
        todo = [test]
        while todo:
            fn = todo.pop()
            if fn.name in seen:
                continue
            seen[fn.name] = fn
            names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
            names |= {a.arg for a in fn.args.args}  # fixtures
            todo += [self.functions.get(n) or shared[n] for n in names if n in self.functions or n in shared]
        return list(seen.values())


def _module(path: Path, source: str | None = None) -> Module:
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    slow = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and "mark.slow" in ast.unparse(node.value)
        for node in tree.body
    )
    module = Module(path, slow)
    folders = {folder: package for package, folder in _packages().items()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("actrec."):
            module.packages.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            module.packages |= {a.name.split(".")[1] for a in node.names if a.name.startswith("actrec.")}
        elif isinstance(node, ast.Constant) and node.value in folders:  # a data package: REPO / "configs"
            module.packages.add(folders[node.value])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            module.functions[node.name] = node
            if node.name.startswith("test") and not slow and not _is_slow(node.decorator_list):
                module.fast_tests.append(node)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test") and not _is_slow(node.decorator_list):
            module.fast_tests += [
                f
                for f in node.body
                if isinstance(f, ast.FunctionDef) and f.name.startswith("test") and not slow
                if not _is_slow(f.decorator_list)
            ]
    return module


@functools.cache  # both tests read the same sources
def _modules() -> list[Module]:
    # This module names every command in its own checks: it drives none.
    return [_module(path) for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name]


@functools.cache
def _source(function: ast.FunctionDef) -> str:
    return ast.unparse(function)


def _drives(source: str, command: str, entry: str) -> bool:
    """Whether ``source`` calls the command: its entry function, ``main(["render", ...])`` or an ``actrec render``
    process (``[*_actrec(), "render", ...]``, ``["actrec", "render"]``, ``[python, "-m", "actrec.cli", "render"]``)."""
    if re.search(rf"\b{entry}\(", source):
        return True
    quoted = rf"[\"']{command}[\"']"
    return bool(
        re.search(rf"main\(\s*\[\s*{quoted}", source)
        or re.search(rf"[\"']actrec(\.cli)?[\"'],\s*{quoted}", source)
        or re.search(rf"\*\w+\([^()]*\),\s*{quoted}", source)
    )


def test_every_package_has_a_test_in_the_fast_run() -> None:
    covered = {package for module in _modules() if module.fast_tests for package in module.packages}
    missing = sorted(set(_packages()) - covered)
    assert not missing, f"no test outside `slow` imports actrec.{{{', '.join(missing)}}}: unmark a fast one"


def test_every_command_has_a_test_in_the_fast_run() -> None:
    commands = _commands()
    assert {"train", "render", "runs", "inspect"} <= set(commands), commands  # the dispatch was read
    shared = _module(TESTS / "conftest.py").functions
    driven: dict[str, str] = {}
    for module in _modules():
        for test in module.fast_tests:
            source = "\n".join(_source(fn) for fn in module.reach(test, shared))
            for command, entry in commands.items():
                if command not in driven and _drives(source, command, entry):
                    driven[command] = f"{module.path.name}::{test.name}"
    missing = sorted(set(commands) - set(driven))
    assert not missing, f"no test outside `slow` drives `actrec {{{', '.join(missing)}}}`: unmark a fast one"


def test_the_rule_reads_slow_marks_and_command_calls() -> None:
    """The reading above, checked on sources it must understand."""
    source = (
        "import pytest\nfrom actrec.viewer.cli import render_main\n"
        "@pytest.mark.slow\ndef test_a(): render_main([])\n"
        "def test_b(): pass\n"
        "class TestC:\n    @pytest.mark.slow\n    def test_d(self): pass\n    def test_e(self): pass\n"
    )
    module = _module(Path("test_x.py"), source)
    assert [t.name for t in module.fast_tests] == ["test_b", "test_e"]
    assert module.packages == {"viewer"}
    assert (
        _module(Path("test_y.py"), "import pytest\npytestmark = [pytest.mark.slow]\ndef test_f(): pass\n").fast_tests
        == []
    )
    assert _drives("def t(run):\n    assert main(['render', str(run)]) == 0", "render", "render_main")
    assert _drives("subprocess.run([*_actrec(), 'train', '--help'])", "train", "train_main")
    assert _drives("subprocess.run([sys.executable, '-m', 'actrec.cli', 'runs'])", "runs", "runs_main")
    assert not _drives("main(['runs', str(run)])", "render", "render_main")
