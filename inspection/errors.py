"""The one exception every inspection command raises for bad input."""

from __future__ import annotations

from actrec.errors import UserError

__all__ = ["InspectError"]


class InspectError(UserError):
    """Bad input to an inspection command (a missing run, an unknown layer, an unreadable image); one sentence."""
