"""Data parallelism as a work queue: a replica that is free takes the next sample from the store.

A fixed shard (10 samples on 4 workers = 3+3+2+2) lets one slow device or an uneven count hold
the whole job; a shared counter in the run's store does not: each take is one atomic
store.add, so every sample is taken exactly once, by whichever replica asked first. The outputs
do not depend on who ran a sample: sample i is always made from seed + i.

In a replica whose first stage is a guidance pair, both halves must start the same samples: the
unconditional half (h = 0) takes and publishes its j-th ticket under the replica, the
conditional half reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ppsvd.backends.deadline import Deadline
from ppsvd.runtime.control import key

NONE_LEFT = -1
"""A published ticket saying the queue is empty."""


class WorkQueue:
    """take() -> the next sample index of `todo` nobody took yet, or None when none is left."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        todo: Sequence[int],
        *,
        replica: int,
        half: int | None,
        timeout_s: float,
        cancelled: Callable[[], bool],
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.todo = tuple(todo)
        self.replica = replica
        self.half = half
        self.timeout_s = timeout_s
        self.cancelled = cancelled
        self.taken = 0
        self.done = False

    def take(self) -> int | None:
        if self.done:
            return None
        if self.half == 1:
            index = self._read_ticket()
        else:
            ticket = int(self.store.add(key(self.run_id, "queue"), 1))  # 1, 2, ... across the run
            index = self.todo[ticket - 1] if ticket <= len(self.todo) else None
            if self.half == 0:
                self.store.set(self._ticket_key(), str(NONE_LEFT if index is None else index))
        self.taken += 1
        if index is None:
            self.done = True
        return index

    def _ticket_key(self) -> str:
        return key(self.run_id, "queue", self.replica, self.taken)

    def _read_ticket(self) -> int | None:
        name = self._ticket_key()
        deadline = Deadline(
            self.timeout_s,
            what=f"the partner's sample {self.taken} of replica {self.replica}",
            cancelled=self.cancelled,
        )
        while not self.store.check([name]):
            time.sleep(deadline.slice(0.002))
        value = int(self.store.get(name))
        return None if value == NONE_LEFT else value
