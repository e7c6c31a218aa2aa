"""The worker processes this launcher started, or this worker's agent started: the only processes
ppsvd ever signals.

The run's store says which pid each stage has, but any local process can write the store (its
port is findable, its keys listable), so a pid read there could be anyone's: an unrelated
`sleep` was once SIGKILLed that way. So every kill goes through the process table first:
- a self-launched run: the launcher's elastic agent starts the workers as direct children of the
  launcher process (`python -m ppsvd.runtime.entry`, as torchrun starts a script); a pid is a
  worker only if it is such a child, running that module, started during this launch. A forged
  entry can then at most name another worker of this same run, which whoever can write the
  store could stop anyway (the abort key).
- under torchrun: the stages are children of one agent, started with RANK and
  TORCHELASTIC_RUN_ID in their environment; a peer kills only a sibling (same parent) whose
  environment, as the kernel recorded it when the agent started it, names this run and that rank.
psutil checks a process's start time before it sends a signal, so a recycled pid is never hit;
a child is never waited for here (that would reap it under the agent's feet).
"""

from __future__ import annotations

import os
import time

import psutil

WORKER_MODULE = "ppsvd.runtime.entry"
"""The module every self-launched worker runs (`python -m`, runtime/entry.py): how the launcher
starts its workers, and how it recognises them in the process table."""


class OwnWorkers:
    """The worker processes of one self-launched run, as the launcher's process table shows them."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._before = {p.pid for p in self._children()}  # the API caller's own children are not ours
        self._since = time.time() - 1.0  # create_time has a coarse clock: allow a little
        self.seen: dict[int, psutil.Process] = {}
        """Every worker process seen so far (pid -> process), alive or not."""

    def _children(self) -> list[psutil.Process]:
        try:
            return self._me.children()
        except psutil.Error:
            return []

    def refresh(self) -> dict[int, psutil.Process]:
        """Look for workers started since the last look; returns every one seen."""
        for child in self._children():
            if child.pid in self._before or child.pid in self.seen:
                continue
            try:
                if child.create_time() >= self._since and _is_worker(child):
                    self.seen[child.pid] = child
            except psutil.Error:
                continue
        return self.seen

    def alive(self) -> list[psutil.Process]:
        """The workers seen that still run (a zombie has ended: the agent reaps it soon)."""
        return [p for p in self.seen.values() if _running(p)]

    def stop_all(self, grace_s: float) -> None:
        """Every worker still running gets grace_s to leave, then SIGKILL (the launcher cleans up after them)."""
        self.refresh()
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in self.alive():
            _kill_after(proc, 0.0)

    def kill(self, pid: int, grace_s: float) -> bool:
        """SIGKILL worker `pid` unless it leaves within grace_s; only a worker this launch started.
        Returns True if it was killed here."""
        proc = self.refresh().get(pid)
        return proc is not None and _kill_after(proc, grace_s)


def kill_own_worker(pid: int, grace_s: float) -> bool:
    """SIGKILL `pid` unless it leaves within grace_s, but only if it is a worker this process
    started (a direct child running the worker module: a service's workers, whatever the
    generation). Returns True if it was killed here."""
    try:
        proc = psutil.Process(pid)
        if proc.ppid() != os.getpid() or not _is_worker(proc):
            return False
    except psutil.Error:
        return False
    return _kill_after(proc, grace_s)


def kill_sibling_stage(rank: int, grace_s: float) -> bool:
    """Under torchrun: SIGKILL stage `rank` if its agent is ours (same parent) and it has not left
    within grace_s. The rank is read from the process's own environment, never from the store."""
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    if run is None:
        return False
    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return False
    for proc in siblings:
        if proc.pid == os.getpid():
            continue
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("TORCHELASTIC_RUN_ID") == run and env.get("RANK") == str(rank):
            return _kill_after(proc, grace_s)
    return False


def _is_worker(proc: psutil.Process) -> bool:
    """A process running `python -m ppsvd.runtime.entry` (psutil.Error when it is gone)."""
    command = proc.cmdline()
    return any(a == "-m" and b == WORKER_MODULE for a, b in zip(command, command[1:], strict=False))


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_after(proc: psutil.Process, grace_s: float) -> bool:
    deadline = time.monotonic() + grace_s
    while _running(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _running(proc):
        return False
    try:
        proc.kill()  # psutil checks it is still the same process (pid and start time) first
    except psutil.Error:
        return False
    return True
