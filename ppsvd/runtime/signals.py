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

# Whether the first stop signal still raises StopSignal. Cleared by stop_raising() once the work
# is over: a SIGTERM that the launcher sends while this worker is already leaving (a peer failed
# a moment after this one finished) must not become a traceback inside leave().
_raising = True
_previous: dict[int, object] = {}  # the handlers catch_stop_signals replaced, for give_back_signals


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
    global _raising
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        if len(received) == 1 and _raising:
            raise StopSignal(signum)

    _raising = True
    for sig in STOP_SIGNALS:
        replaced = signal.signal(sig, handler)
        _previous.setdefault(sig, replaced)  # called again in one process: the caller's, not our own
    return received


def stop_raising() -> None:
    """From now on stop signals are only recorded. Call it inside the `try` that catches
    StopSignal, as its last statement: a signal before it is caught there, none can raise after."""
    global _raising
    _raising = False


def give_back_signals() -> None:
    """Put back the handlers catch_stop_signals replaced (the Python API under torchrun returns to
    its caller, whose Ctrl-C must work again)."""
    stop_raising()
    for sig, previous in _previous.items():
        if previous is not None:  # None: installed outside Python, nothing to put back
            signal.signal(sig, previous)
    _previous.clear()


def leave(code: int) -> None:
    """Exit a worker after a failure or a signal: flush, then os._exit. A normal interpreter
    shutdown runs the C++ destructors of gloo's groups and threads, which can abort
    ("terminate called without an active exception") and bury the one line that matters."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
