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
    """Lay out ``build/api-src/actrec/`` (``tools/package_tree.py``) before mkdocstrings reads its search paths.

    griffe, mkdocstrings' loader, reads source trees from disk and cannot follow pyproject's package-dir mapping.
    """
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("package_tree", root / "tools" / "package_tree.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.lay_out(root / "build" / "api-src")
