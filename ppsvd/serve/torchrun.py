"""`ppsvd serve` under torchrun: every rank runs the command, rank 0 hosts the service.

Rank 0 holds what a self-launched service's process holds (server.py, pipeline.py): the job
store, the HTTP server, the feeder and the monitor. Its workers are torchrun's ranks: rank 0 runs
stage 0 in the supervisor's thread (its main thread keeps the signals, as the self-launched
service's does), every other rank runs its stage in its main thread and never opens the job store
or a port. They meet in torchrun's rendezvous store, under this launch's run id.

One torchrun launch is one generation of the workers. When a stage fails, rank 0 puts the jobs it
held back in the queue and exits 1, naming the stage; torchrun starts every rank again while its
--max-restarts allows, and rank 0 reopens the state dir as after a kill. SIGTERM to torchrun
reaches every rank of its host: rank 0 drains (new jobs 503, the jobs in flight finish, exit 143);
the other ranks ignore it and end with the stream.

Several hosts: stage 0 reads the uploaded images from --state-dir and the last stage writes the
outputs there, so a rank that does either on another host than rank 0 must see the same directory
(a shared filesystem). Checked at start: rank 0 writes a random token into its state dir, and
every such rank must read it back from its own --state-dir within --timeout, or the service
refuses in one line.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

from ppsvd.errors import ConfigError
from ppsvd.io.atomic import write_with
from ppsvd.planning.ranks import rank_work
from ppsvd.runtime.control import describe, key, read_abort, store_get
from ppsvd.runtime.launch import WorkersEnded
from ppsvd.runtime.signals import STOP_SIGNALS
from ppsvd.runtime.worker import serve_stage, torchrun_run_id
from ppsvd.serve.config import ServeConfig

SHARE_FILE = ".share-check"
"""The file in the state dir that holds rank 0's token while the ranks check they share the directory."""
POLL_S = 0.2


class World:
    """This process's place in the torchrun world, and the store all ranks share."""

    def __init__(self, rank: int, size: int, timeout_s: float) -> None:
        import torch.distributed as dist  # heavy: torch

        self.rank, self.size = rank, size
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s)))
        # torchrun's agent's TCPStore, the same across restarts: every key of ours lives under the
        # run id, which names the attempt (the process groups' too: backends/torch_p2p).
        self.store = store
        self.run_id = torchrun_run_id()


def file_ranks(config: ServeConfig, world: int) -> list[int]:
    """The ranks other than 0 that read uploaded images (a replica's stage 0) or write outputs (a last stage)."""
    run = config.run
    layout = run.layout_plan(world)
    ranks = []
    for rank in range(1, world):
        work = rank_work(run.layout.strategy, world, rank, (), total_steps=run.job.total_steps, layout=layout)
        if work.stage == 0 or work.writes:
            ranks.append(rank)
    return ranks


def _share_key(run_id: str, *parts: object) -> str:
    return key(run_id, "serve", "share", *parts)


def offer_state_dir(world: World, config: ServeConfig) -> None:
    """Rank 0: a random token into the state dir, then wait until every rank that reads or writes
    job files says it read the token back from its own --state-dir. ConfigError (one line) if one did not."""
    timeout_s = config.run.transport.timeout_s
    ranks = file_ranks(config, world.size)
    if not ranks:
        return
    token = secrets.token_hex(16)
    path = Path(config.state_dir) / SHARE_FILE
    write_with(path, lambda tmp: Path(tmp).write_text(token))
    offer = {"token": token, "host": socket.gethostname(), "path": str(Path(config.state_dir).resolve())}
    world.store.set(_share_key(world.run_id), json.dumps(offer))
    try:
        for rank in ranks:
            try:
                answer = store_get(world.store, _share_key(world.run_id, rank), timeout_s + 10.0).decode()
            except Exception:
                raise ConfigError(
                    f"--state-dir {config.state_dir}: rank {rank} did not say whether it sees this state dir "
                    f"within --timeout {timeout_s:g} s; check that every rank started (torchrun's log), or "
                    "give a longer --timeout"
                ) from None
            if answer != "ok":
                raise ConfigError(answer)
    finally:
        path.unlink(missing_ok=True)


def check_state_dir(world: World, config: ServeConfig) -> None:
    """A rank that reads or writes job files: read rank 0's token from its own --state-dir within
    --timeout and tell rank 0; ConfigError (one line) if it is not there."""
    timeout_s = config.run.transport.timeout_s
    offer = json.loads(store_get(world.store, _share_key(world.run_id), timeout_s))
    path = Path(config.state_dir) / SHARE_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if path.read_text() == offer["token"]:
                world.store.set(_share_key(world.run_id, world.rank), "ok")
                return
        except OSError:
            pass  # not there (yet: a network filesystem may show it late)
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    line = (
        f"--state-dir {config.state_dir}: rank {world.rank} on host {socket.gethostname()} does not see the "
        f"state dir of rank 0 (host {offer['host']}, {offer['path']}): its check file did not appear there "
        f"within --timeout {timeout_s:g} s; put --state-dir on a filesystem every host shares (NFS, say) "
        "and give its path on every host"
    )
    world.store.set(_share_key(world.run_id, world.rank), line)
    raise ConfigError(line)


def serve_other_rank(world: World, config: ServeConfig) -> int:
    """A rank other than 0: check the state dir if it reads or writes job files, then run its stage
    until the stream ends (rank 0 drains) or a stage fails. Returns the exit code."""
    if world.rank in file_ranks(config, world.size):
        check_state_dir(world, config)
    # Rank 0 drains the service; a signal here (torchrun passes SIGTERM to every rank of its host)
    # must not cut the jobs in flight short. A failed stage still stops this one through the
    # control plane (runtime/control.py) within seconds, and a dead rank 0 with it.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    return serve_stage(config.run, world.store, world.run_id, config.outputs_dir, received=[], speaks=False)


class RankZeroStage:
    """Rank 0's own stage, run by the service's supervisor thread (pipeline.Pipeline, torchrun=...)
    as one generation of the workers."""

    def __init__(self, world: World, config: ServeConfig) -> None:
        self.world = world
        self.config = config
        self.run_id = world.run_id
        self.store = world.store

    def run(self) -> WorkersEnded:
        code = serve_stage(self.config.run, self.store, self.run_id, self.config.outputs_dir, received=[], speaks=False)
        if code == 0:
            return WorkersEnded()
        reason = read_abort(self.store, self.run_id)
        if reason is not None:
            return WorkersEnded(error=describe(reason, self.store, self.run_id), failed_stage=reason.stage)
        return WorkersEnded(error=f"stage 0 ended with exit code {code}", failed_stage=0)

    def fatal(self, crash: str) -> str:
        """The line rank 0 leaves with when the workers crashed: torchrun restarts them, or not."""
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
        if restarts < allowed:
            return (
                f"{crash}; the jobs in flight go back to the queue and torchrun starts the service again "
                f"(restart {restarts + 1} of --max-restarts {allowed})"
            )
        return (
            f"{crash}; no torchrun restart left (--max-restarts {allowed}), so the service stopped; its queued "
            f"jobs stay in {self.config.state_dir} for the next start"
        )
