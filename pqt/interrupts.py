"""Ctrl-C must stay a KeyboardInterrupt, whatever native code a backend loads."""

from __future__ import annotations

import signal
import threading


def restore_sigint() -> None:
    """Re-install Python's own SIGINT handler at the C level.

    Importing exqalibur (Perceval's simulator) installs a native SIGINT handler, so Ctrl-C no longer
    raises KeyboardInterrupt and an interrupted run could not stop cleanly (perceval 1.3.1);
    ``signal.getsignal`` still reports Python's handler, which is what we put back.
    """
    handler = signal.getsignal(signal.SIGINT)
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)

