"""The viewer's one exception type."""

from __future__ import annotations

from actrec.errors import UserError


class ViewerError(UserError):
    """A picture cannot be made or written; the message is one sentence for the user."""
