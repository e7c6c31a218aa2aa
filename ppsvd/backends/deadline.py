"""One wait's time limit, checked between the short slices it is waited in.

Every blocking wait in a run (a queue hand-off, a socket poll, a gloo work, a barrier in the
store) waits in slices of at most ~50 ms, so that between slices it notices that the run is
stopping elsewhere. A Deadline is that check, written once: the same two exceptions with the
same wording everywhere (Cancelled when the run stops, TransportTimeout when time is up).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ppsvd.errors import Cancelled, TransportTimeout

CancelCheck = Callable[[], bool]


def never() -> bool:
    """A CancelCheck for waits that only a deadline can end."""
    return False


class Deadline:
    """`timeout_s` from now for the wait named `what` ("receive from stage 1", ...).

    `cancelled()` is asked before every slice, so it must be cheap (an Event's is_set).
    """

    def __init__(self, timeout_s: float, *, what: str, cancelled: CancelCheck = never) -> None:
        self.timeout_s = timeout_s
        self.what = what
        self.cancelled = cancelled
        self.end = time.monotonic() + timeout_s

    def part(self, what: str) -> Deadline:
        """The same end and cancellation for one step of this wait, named on its own."""
        step = Deadline(self.timeout_s, what=what, cancelled=self.cancelled)
        step.end = self.end
        return step

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        """Raise Cancelled if the run is stopping, TransportTimeout if the time is up."""
        if self.cancelled():
            raise Cancelled(f"stopped waiting for {self.what}: the run is stopping")
        if time.monotonic() >= self.end:
            raise TransportTimeout(f"{self.what} did not complete within {self.timeout_s:g} s")

    def slice(self, longest_s: float) -> float:
        """check(), then how long the next slice may block: at most longest_s, never past the end."""
        self.check()
        return min(longest_s, self.remaining())
