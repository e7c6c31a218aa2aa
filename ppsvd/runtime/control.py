"""Run control through the shared torch.distributed Store: abort flag, liveness, completion.

Why a store and not only the launcher: torchrun tears all local workers down when one fails,
but it does not blame a stage that exits 0 early, it cannot tell stages on another node, and
ZeroMQ never notices a dead peer. So every stage
- writes the first failure's reason under one key (compare_set: the root cause is never
  overwritten by the stages that stop because of it),
- bumps a heartbeat counter twice a second and watches everyone else's: a counter that stops
  moving for `stale_after_s` without a 'done' mark means that stage is gone,
- watches its parent process (the launcher) and the store itself,
- watches its own compute loop (StepWatch): a stage in the middle of its steps whose heartbeat
  thread still runs but that makes no step for max(--stall-timeout, 20 x its median step) is hung
  (a stuck kernel or collective) and names itself.
Any of these sets a local Event that every wait in the stage polls (`cancelled`).

Once the abort key names a stage, that stage must go even if it cannot act (SIGSTOPped, hung in
C code): the launcher (or, under torchrun, its peers on the same host) SIGKILLs it after
KILL_GRACE_S, so no one waits for the elastic agent's 30 s SIGTERM grace.
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ppsvd.backends.deadline import Deadline
from ppsvd.backends.hosts import HostFacts, publish_host, read_host, this_host

ABORT_KEY = "abort"
HEARTBEAT_S = 0.5
STALE_AFTER_S = 5.0
STALL_FACTOR = 20
"""A step that takes this many times the stage's median step (and at least --stall-timeout) is a hang."""
KILL_GRACE_S = 1.0
"""How long a blamed stage may take to exit by itself before it is SIGKILLed."""


def key(run_id: str, *parts: object) -> str:
    return "/".join(["ppsvd", run_id, *map(str, parts)])


def new_run_id() -> str:
    """A run id for a self-launched run: a public part (logs, config.json) and a secret one.

    Every store key and zmq key of the run contains the whole id, so a process that can reach
    the store but was not told the id cannot guess a key to forge (it could list them: the
    store's reachability is what really guards it, see docs/multinode.md)."""

    return f"{secrets.token_hex(6)}~{secrets.token_hex(16)}"


def public_run_id(run_id: str) -> str:
    """The part of a run id that may be written to disk or shown."""
    return run_id.split("~")[0]


@dataclass
class StopReason:
    stage: int | None
    message: str


class StepWatch:
    """The compute loop's progress as the watchdog sees it: the loop calls begin() before a
    stage's steps of a sample, step() after each step and end() after the last; the watcher
    asks stalled() twice a second. Outside begin/end (receiving, sending, loading) nothing is judged
    here: those waits have their own deadlines."""

    def __init__(self, min_s: float, first_s: float) -> None:
        self.min_s = min_s
        self.first_s = first_s
        """Before any step finished, the allowance is --timeout (the first step may compile or tune kernels)."""
        self._durations: deque[float] = deque(maxlen=101)
        self._lock = threading.Lock()
        self._since: float | None = None

    def begin(self) -> None:
        self._since = time.monotonic()

    def step(self, _step: int | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._since is not None:
                self._durations.append(now - self._since)
            self._since = now

    def end(self) -> None:
        self._since = None

    def limit(self) -> float:
        with self._lock:
            durations = list(self._durations)
        if not durations:
            return max(self.min_s, self.first_s)
        return max(self.min_s, STALL_FACTOR * statistics.median(durations))

    def stalled(self, now: float) -> float | None:
        """The limit that the current step has exceeded, or None."""
        since = self._since
        if since is None:
            return None
        limit = self.limit()
        return limit if now - since > limit else None


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
        stall_after_s: float = 60.0,
        kill_blamed: bool = False,
    ):
        """kill_blamed: SIGKILL a blamed stage on this host that does not exit by itself (under
        torchrun; a self-launched run's launcher does it for every stage)."""
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
        self.kill_blamed = kill_blamed
        self.steps = StepWatch(stall_after_s, startup_grace_s)
        self._done = False

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
        self._publish(StopReason(self.rank if stage is None else stage, message))

    def interrupted(self, signal_name: str) -> None:
        """This stage got SIGINT/SIGTERM/SIGHUP: stop the others too, blaming no stage, unless a
        peer on this host died first (then the signal is the agent tearing the host down because
        of it, and that peer is the cause)."""
        try:
            self.store.set(key(self.run_id, "left", self.rank), signal_name)
        except Exception:
            pass
        if not self._blame_dead_neighbours():
            self._publish(StopReason(None, f"interrupted by {signal_name}"))

    def _publish(self, reason: StopReason) -> None:
        self._set_local(reason)
        stage = "" if reason.stage is None else str(reason.stage)
        try:
            self.store.compare_set(key(self.run_id, ABORT_KEY), "", f"{stage}\t{reason.message}")
        except Exception:
            pass  # the store may be the thing that broke; the local flag is set either way

    def read_abort(self) -> StopReason | None:
        return read_abort(self.store, self.run_id)

    # -- liveness --------------------------------------------------------------------------------
    def start_watching(self) -> None:
        try:
            publish_host(self.store, self.run_id, self.rank)  # for blame lines and the kill of a hung stage
        except Exception:
            pass  # the watcher reports a lost store
        self._watcher = threading.Thread(target=self._watch, name=f"ppsvd-watch-{self.rank}", daemon=True)
        self._watcher.start()

    def mark_ready(self) -> None:
        """This stage loaded its model and opened its links: from now on a silent heartbeat means trouble."""
        self.store.set(key(self.run_id, "ready", self.rank), "1")

    def mark_done(self) -> None:
        """This stage finished its work: peers stop expecting its heartbeat (it keeps watching them)."""
        self.store.set(key(self.run_id, "done", self.rank), "1")
        self._done = True

    def stop_watching(self) -> None:
        self._finished.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2 * KILL_GRACE_S + 1)
        if not self._done:
            self._blame_dead_neighbours()

    def _blame_dead_neighbours(self) -> bool:
        """Leaving early (a failure, or the agent's SIGTERM because a stage on this host died):
        if a peer on this host is provably gone without finishing or being interrupted, it is the
        cause; say so before stages on other hosts see only our links break and blame us."""
        try:
            here = this_host()
            for peer in range(self.world_size):
                if peer == self.rank or self.store.check([key(self.run_id, "done", peer)]):
                    continue
                if self.store.check([key(self.run_id, "left", peer)]):
                    continue  # it was interrupted too (Ctrl-C reaches the whole group)
                facts = read_host(self.store, self.run_id, peer)
                if facts is not None and facts.shares_processes(here) and not facts.alive():
                    self.fail("its process ended before it finished (killed or exited)", stage=peer)
                    return True
        except Exception:
            pass  # best effort: the store may be gone too
        return False

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
                        if self.kill_blamed and found.stage not in (None, self.rank):
                            kill_if_alive(self.store, self.run_id, found.stage)
                        return
                stalled = self.steps.stalled(now)
                if stalled is not None:
                    self._hung(stalled)
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
                self._set_local(
                    StopReason(None, f"lost the run's control store ({type(exc).__name__}); the launcher is gone")
                )
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

    def _hung(self, limit: float) -> None:
        """This stage's compute loop is stuck in a step: name it, then leave (the stuck thread
        cannot unwind, so nothing else would end this process)."""
        message = f"made no step for {limit:g} s in the middle of its steps (hung in a kernel or collective?)"
        self.fail(message)
        print(f"ppsvd: stage {self.rank} failed: {message}", file=sys.stderr, flush=True)
        if self._finished.wait(2 * KILL_GRACE_S):
            return
        sys.stderr.flush()
        os._exit(1)


def kill_if_alive(store: Any, run_id: str, stage: int, grace_s: float = KILL_GRACE_S) -> bool:
    """SIGKILL stage `stage` if it runs on this host and has not exited within grace_s.

    Returns True if it was killed here. The process is identified by pid and start time, so a
    recycled pid is never hit."""
    facts: HostFacts | None = read_host(store, run_id, stage)
    if facts is None or not facts.shares_processes(this_host()):
        return False
    deadline = time.monotonic() + grace_s
    while facts.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not facts.alive():
        return False
    try:
        os.kill(facts.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def describe(reason: StopReason, store: Any, run_id: str) -> str:
    """The one line naming the cause, with the blamed stage's host (for runs over several hosts)."""
    if reason.stage is None:
        return reason.message
    facts = read_host(store, run_id, reason.stage)
    where = f" on host {facts.hostname}" if facts is not None else ""
    return f"stage {reason.stage}{where} failed: {reason.message}"


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
