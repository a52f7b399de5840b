"""actrec: record what every layer of a network does at every training step, and watch it learn.

This folder holds only the top of the ``actrec`` package; each capability lives in its own top-level folder of
the checkout, installed as a subpackage (``viewer/`` is ``actrec.viewer``, ``runfolder/`` is ``actrec.runs``;
pyproject.toml's ``package-dir`` lists them). Importing ``actrec`` imports nothing heavy: no torch, no h5py, and
not even :mod:`importlib.metadata` until ``actrec.__version__`` is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    __version__: str

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version is looked up on first use (PEP 562): importlib.metadata imports email, zipfile and more, ~30 ms
    # that every command paid at start-up (an eighth of `actrec render`'s) although none but --version reads it.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("actrec")
    except PackageNotFoundError:  # running from a checkout that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value
