"""The viewer's one exception type."""

from __future__ import annotations


class ViewerError(Exception):
    """A picture cannot be made or written; the message is one sentence for the user."""
