"""Ctrl-C and SIGTERM as exceptions, so every ``finally``/``except BaseException`` cleanup runs before the exit.

Python turns SIGINT into KeyboardInterrupt but lets SIGTERM (``kill``, a job scheduler, Slicer's Cancel) end the
process at once, skipping all cleanup: temporaries and half-made output sets stay behind. Inside
``termination_as_interrupt()`` SIGTERM raises ``Terminated`` instead (a KeyboardInterrupt, so code that handles
Ctrl-C handles both), and on the way out every live temporary of ``atomic`` is removed.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from .atomic import discard_all_live


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


@contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Raise ``Terminated`` on SIGTERM inside the block (main thread only) and remove live temporaries on any
    interrupt."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield
    except KeyboardInterrupt:
        discard_all_live()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
