"""One error base for every one-sentence refusal, and the one guard that turns it into an exit code.

Every package raises its own subclass of :class:`UserError` (``StoreError``, ``ViewerError``, ``RunError``,
...): the message is one sentence for the user, naming the argument (library) or the flag (CLI layer).
Each ``actrec`` command runs its work through :func:`run_guarded`, so the same mistake reads the same way
whichever command met it, and SIGTERM is handled as Ctrl-C is.

This package imports nothing else of actrec, so every package may import it without a cycle.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "UserError", "run_guarded"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UserError(Exception):
    """Bad input or an unusable file, said in one sentence; the base of every actrec refusal."""


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
    try:
        return action()
    except (UserError, *errors) as error:
        print(f"{program}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyError as error:
        # h5py's word for an object the file lacks: a store missing a dataset or group. The store
        # reader's schema check names them up front; this keeps any it misses to one sentence too.
        message = str(error.args[0]) if error.args else ""
        if not message.startswith("Unable to"):
            raise
        print(f"{program}: the store is incomplete or damaged ({message.rstrip('.')}).", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        # A disk that fills up or a folder removed mid-run: name the file, keep it to one sentence.
        where = f" {error.filename}" if error.filename else ""
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
