"""One guard for every subcommand that reads stores: user errors become one sentence and an exit code.

``actrec render``, ``tensorboard``, ``dynamics``, ``compare`` and ``report`` run their work through
:func:`run_guarded`, so the same mistake reads the same way whichever command met it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from actrec.runs import RunError
from actrec.store import StoreError
from actrec.viewer.errors import ViewerError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def run_guarded(program: str, action: Callable[[], int], errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``action``; user errors become one sentence on stderr and a non-zero exit code, never a traceback.

    SIGTERM is handled as Ctrl-C is: writers remove their unfinished files and workers are stopped.

    Args:
        program: the command's name, the start of every message (``"actrec render"``).
        action: the command's work; returns the exit code.
        errors: the command's own one-sentence exception types, beyond the store's, the viewer's and
            the run folder's.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return action()
    except (StoreError, ViewerError, RunError, *errors) as error:
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
    except KeyboardInterrupt:
        print(f"{program}: interrupted; files not yet finished were discarded.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
