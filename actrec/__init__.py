"""actrec: record what every layer of a network does at every training step, and watch it learn.

This folder holds only the top of the ``actrec`` package; each capability lives in its own top-level folder of
the checkout, installed as a subpackage (``viewer/`` is ``actrec.viewer``, ``runfolder/`` is ``actrec.runs``;
pyproject.toml's ``package-dir`` lists them). Importing ``actrec`` imports nothing heavy: no torch, no h5py.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("actrec")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
