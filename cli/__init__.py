"""The ``actrec`` command: one entry point, one subcommand per job."""

from actrec.cli._main import main

__all__ = ["main"]
