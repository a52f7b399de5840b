"""MkDocs hook: replace ``<!-- actrec-help: CMD -->`` with the output of ``actrec CMD --help``.

The CLI reference pages are generated from the commands themselves when the site is built, so the flags
they list cannot drift from the code. A command whose help fails to print fails the (strict) build.
"""

from __future__ import annotations

import contextlib
import io
import re

from mkdocs.exceptions import PluginError

_MARKER = re.compile(r"<!-- actrec-help: ?([a-z ]*) -->")


def _help_text(command: str) -> str:
    from actrec.cli._main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([*command.split(), "--help"])
        except SystemExit as exit_request:
            code = exit_request.code
    text = out.getvalue()
    if code not in (0, None) or not text.strip():
        raise PluginError(f"`actrec {command} --help` printed no help (exit code {code}).")
    return text


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return _MARKER.sub(lambda match: f"```text\n{_help_text(match.group(1)).rstrip()}\n```", markdown)


def on_startup(**kwargs: object) -> None:
    """Lay out ``build/api-src/actrec/`` as symlinks to the top-level folders, for the API reference.

    The packages live in top-level folders mapped into ``actrec.*`` by pyproject's ``package-dir``; griffe
    (mkdocstrings' loader) reads source trees from disk and cannot follow that mapping, so it is given this
    tree instead (the same layout a non-editable install has). Laid out at startup, before mkdocstrings
    reads its search paths.
    """
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[2]
    package_dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tree = root / "build" / "api-src"
    for package, folder in package_dirs.items():
        link = tree.joinpath(*package.split("."))
        if package == "actrec":
            link.mkdir(parents=True, exist_ok=True)
            for item in (root / folder).iterdir():
                if item.suffix == ".py" and not (link / item.name).exists():
                    (link / item.name).symlink_to(item)
            continue
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / folder, target_is_directory=True)
