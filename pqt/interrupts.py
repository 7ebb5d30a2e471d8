"""Stopping a run from outside: Ctrl-C stays a KeyboardInterrupt whatever native code a backend loads,
and SIGTERM (``kill``, a batch scheduler's time limit) stops a run the same way."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where Ctrl-C's KeyboardInterrupt would be, so the run stops the same way."""


def restore_sigint() -> None:
    """Re-install Python's own SIGINT handler at the C level.

    Importing exqalibur (Perceval's simulator) installs a native SIGINT handler, so Ctrl-C no longer
    raises KeyboardInterrupt and an interrupted run could not stop cleanly (perceval 1.3.1);
    ``signal.getsignal`` still reports Python's handler, which is what we put back.
    """
    handler = signal.getsignal(signal.SIGINT)
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` (a KeyboardInterrupt).

    Python's default for SIGTERM is to die at once, without a message and with metrics.json still
    saying "running". A second SIGTERM gets the default again, so ``kill`` twice still ends a run that
    is stuck in its clean-up (files are written atomically: nothing finished is lost either way).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
