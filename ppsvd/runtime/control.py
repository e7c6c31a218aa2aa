"""Run control through the shared torch.distributed Store: abort flag, liveness, completion.

Why a store and not only the launcher: torchrun tears all local workers down when one fails,
but it does not blame a stage that exits 0 early, it cannot tell stages on another node, and
ZeroMQ never notices a dead peer. So every stage
- writes the first failure's reason under one key (compare_set: the root cause is never
  overwritten by the stages that stop because of it),
- bumps a heartbeat counter twice a second and watches everyone else's: a counter that stops
  moving for `stale_after_s` without a 'done' mark means that stage is gone,
- watches its parent process (the launcher) and the store itself.
Any of these sets a local Event that every wait in the stage polls (`cancelled`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ppsvd.backends.deadline import Deadline

ABORT_KEY = "abort"
HEARTBEAT_S = 0.5
STALE_AFTER_S = 5.0


def key(run_id: str, *parts: object) -> str:
    return "/".join(["ppsvd", run_id, *map(str, parts)])


@dataclass
class StopReason:
    stage: int | None
    message: str


class RunControl:
    """One per stage process. Thread-safe: the compute loop, sender and receiver all poll it."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        rank: int,
        world_size: int,
        *,
        stale_after_s: float = STALE_AFTER_S,
        startup_grace_s: float = 600.0,
    ):
        self.store = store
        self.run_id = run_id
        self.rank = rank
        self.world_size = world_size
        self.stale_after_s = stale_after_s
        self.startup_grace_s = startup_grace_s
        self._stop = threading.Event()
        self._reason: StopReason | None = None
        self._lock = threading.Lock()
        self._parent = os.getppid()
        self._watcher: threading.Thread | None = None
        self._finished = threading.Event()

    # -- the flag ------------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def reason(self) -> StopReason | None:
        return self._reason

    def _set_local(self, reason: StopReason) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._stop.set()

    def fail(self, message: str, *, stage: int | None = None) -> None:
        """A stage failed (this one unless `stage` says which): publish the reason and stop.

        The first published reason wins (compare_set), so the stages that stop because of it
        never overwrite the root cause.
        """
        reason = StopReason(self.rank if stage is None else stage, message)
        self._set_local(reason)
        try:
            self.store.compare_set(key(self.run_id, ABORT_KEY), "", f"{reason.stage}\t{message}")
        except Exception:
            pass  # the store may be the thing that broke; the local flag is set either way

    def read_abort(self) -> StopReason | None:
        return read_abort(self.store, self.run_id)

    # -- liveness --------------------------------------------------------------------------------
    def start_watching(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name=f"ppsvd-watch-{self.rank}", daemon=True)
        self._watcher.start()

    def mark_ready(self) -> None:
        """This stage loaded its model and opened its links: from now on a silent heartbeat means trouble."""
        self.store.set(key(self.run_id, "ready", self.rank), "1")

    def mark_done(self) -> None:
        """This stage finished its work: peers stop expecting its heartbeat (it keeps watching them)."""
        self.store.set(key(self.run_id, "done", self.rank), "1")

    def stop_watching(self) -> None:
        self._finished.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)

    def _watch(self) -> None:
        last_seen: dict[int, tuple[int, float]] = {}
        abort_key = key(self.run_id, ABORT_KEY)
        while not self._finished.is_set() and not self._stop.is_set():
            now = time.monotonic()
            try:
                self.store.add(key(self.run_id, "hb", self.rank), 1)
                if self.store.check([abort_key]):
                    found = self.read_abort()
                    if found is not None:
                        self._set_local(found)
                        return
                for peer in range(self.world_size):
                    if peer == self.rank or self.store.check([key(self.run_id, "done", peer)]):
                        continue
                    beats = self.store.add(key(self.run_id, "hb", peer), 0)
                    previous = last_seen.get(peer)
                    if previous is None or previous[0] != beats:
                        last_seen[peer] = (beats, now)
                        continue
                    # Until a stage is ready it may be importing torch or loading weights, which
                    # can hold the GIL (and so its heartbeat thread) for seconds: allow longer.
                    started = self.store.check([key(self.run_id, "ready", peer)])
                    limit = self.stale_after_s if started else self.startup_grace_s
                    if now - previous[1] > limit:
                        what = "stopped responding (exited or hung)" if started else "did not finish starting"
                        self.fail(f"{what} for {limit:g} s", stage=peer)
                        return
            except Exception as exc:  # the store is gone: the launcher or the agent died
                self._set_local(StopReason(None, f"lost the run's control store ({type(exc).__name__}); the launcher is gone"))
                return
            if os.getppid() != self._parent:
                self._set_local(StopReason(None, "the launcher process died"))
                return
            self._finished.wait(HEARTBEAT_S)

    # -- completion --------------------------------------------------------------------------------
    def barrier(self, name: str, timeout_s: float) -> None:
        """Wait until every stage reached the barrier `name`; raises Cancelled or TransportTimeout."""
        counter = key(self.run_id, "barrier", name)
        self.store.add(counter, 1)
        deadline = Deadline(timeout_s, what=f"the {name!r} barrier", cancelled=self.cancelled)
        while self.store.add(counter, 0) < self.world_size:
            time.sleep(deadline.slice(0.005))

    def wait_all_done(self, timeout_s: float) -> None:
        """Block until every stage marked done; raises Cancelled or TransportTimeout."""
        keys = [key(self.run_id, "done", r) for r in range(self.world_size)]
        deadline = Deadline(timeout_s, what="the other stages' work", cancelled=self.cancelled)
        while not self.store.check(keys):
            time.sleep(deadline.slice(0.02))


def read_abort(store: Any, run_id: str) -> StopReason | None:
    try:
        if not store.check([key(run_id, ABORT_KEY)]):
            return None
        raw = store.get(key(run_id, ABORT_KEY)).decode()
    except Exception:
        return None
    stage, _, message = raw.partition("\t")
    return StopReason(int(stage) if stage.isdigit() else None, message)


def store_get(store: Any, name: str, timeout_s: float) -> bytes:
    """store.get with an explicit bound (the default store timeout can be long)."""
    store.wait([name], timedelta(seconds=timeout_s))
    return store.get(name)
