"""One error base for every one-sentence refusal, and the one guard that turns it into an exit code.

Every package raises its own subclass of :class:`UserError` (``StoreError``, ``ViewerError``, ``RunError``,
...): the message is one sentence for the user, naming the argument (library) or the flag (CLI layer).
Each ``actrec`` command runs its work through :func:`run_guarded`, so the same mistake reads the same way
whichever command met it, and SIGTERM is handled as Ctrl-C is.

This package imports nothing else of actrec, so every package may import it without a cycle.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "UserError", "run_guarded", "terminal_safe"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UserError(Exception):
    """Bad input or an unusable file, said in one sentence; the base of every actrec refusal."""


#: C0 and C1 control characters (ESC starts every terminal escape sequence), DEL, line and paragraph
#: separators, and the bidirectional overrides and isolates that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``).

    Names and fields read from files (a layer name, a summary's ``model``) may hold terminal escape sequences
    that clear the screen or set the window title; printed through this they are shown, not obeyed.

    Args:
        text: what is about to be printed.
    """
    return _UNSAFE.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that the same cleanup runs."""


def run_guarded(program: str, action: Callable[[], int], errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``action``; user errors become one sentence on stderr and a non-zero exit code, never a traceback.

    SIGTERM is handled as Ctrl-C is (writers remove their unfinished files, workers are stopped), and
    ends with exit code 143 instead of 130.

    Args:
        program: the command's name, the start of every message (``"actrec render"``).
        action: the command's work; returns the exit code.
        errors: extra one-sentence exception types that do not derive from :class:`UserError`
            (kept for third-party code; every actrec error derives from it).
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    refusals: tuple[type[BaseException], ...] = (UserError, *errors)
    try:
        return action()
    except refusals as error:
        print(f"{program}: {terminal_safe(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyError as error:
        # h5py's word for an object the file lacks: a store missing a dataset or group. The store
        # reader's schema check names them up front; this keeps any it misses to one sentence too.
        message = str(error.args[0]) if error.args else ""
        if not message.startswith("Unable to"):
            raise
        message = terminal_safe(message.rstrip("."))
        print(f"{program}: the store is incomplete or damaged ({message}).", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        # A disk that fills up or a folder removed mid-run: name the file, keep it to one sentence.
        where = f" {terminal_safe(str(error.filename))}" if error.filename else ""
        print(f"{program}: could not read or write{where}: {error.strerror or error}.", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        how = "terminated" if isinstance(interrupt, _Terminated) else "interrupted"
        print(f"{program}: {how}; files not yet finished were discarded.", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(interrupt, _Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated
