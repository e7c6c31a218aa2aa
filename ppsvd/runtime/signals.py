"""How a worker takes SIGINT, SIGTERM and SIGHUP: the first one becomes StopSignal in its main
thread, later ones are only noted, and it leaves with os._exit(128 + signal) after cleaning up.

Standard library only: a self-launched worker (runtime/entry.py) installs this before it imports
torch, so a Ctrl-C that arrives while it is still starting ends it quietly too.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignal(BaseException):
    """SIGINT, SIGTERM or SIGHUP reached this worker. A BaseException, so no `except Exception`
    on the way swallows it; the worker turns it into a quiet exit with code 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def catch_stop_signals() -> list[int]:
    """From now on the first SIGINT/SIGTERM/SIGHUP raises StopSignal in the main thread; later
    ones are only recorded (the launcher repeats the signal while this process cleans up, and
    a second exception would cut the clean-up short). Returns the list of signals received."""
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        if len(received) == 1:
            raise StopSignal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return received


def leave(code: int) -> None:
    """Exit a worker after a failure or a signal: flush, then os._exit. A normal interpreter
    shutdown runs the C++ destructors of gloo's groups and threads, which can abort
    ("terminate called without an active exception") and bury the one line that matters."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
