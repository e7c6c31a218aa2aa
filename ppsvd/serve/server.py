"""`ppsvd serve`'s process: the job store, the workers, the HTTP server, and what a signal does.

Threads of this one process: main (signals, then the orderly end), the HTTP server (uvicorn),
the supervisor with its feeder and monitor (pipeline.py). The workers are child processes; they
die with this process (PR_SET_PDEATHSIG), so a SIGKILLed server leaves no orphans, and the
next start on the same state dir picks the queue up where it was.
Under torchrun this is rank 0's process, and its workers are torchrun's ranks (serve/torchrun.py).

SIGTERM / SIGINT / SIGHUP: new jobs get 503, the feeder hands out no more jobs, the jobs in
flight finish (up to --drain-timeout), the workers leave, and the process exits with 128 + the
signal and one line saying what is kept. A second signal stops at once (the jobs in flight go
back to the queue for the next start).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ppsvd.backends.hosts import loopback_store
from ppsvd.console import error_line, notice
from ppsvd.errors import ConfigError
from ppsvd.io.atomic import check_output_dir, remove_temp_files
from ppsvd.models import pixels
from ppsvd.serve.config import ServeConfig
from ppsvd.serve.jobs import JobStore
from ppsvd.serve.metrics import ServiceMetrics
from ppsvd.serve.pipeline import Pipeline, remove_outputs
from ppsvd.serve.schemas import Served
from ppsvd.serve.service import Service
from ppsvd.serve.state import ServiceState
from ppsvd.serve.torchrun import RankZeroStage, World, offer_state_dir, serve_other_rank

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ECHO_WINDOW_S = 2.0
"""Under torchrun, a second signal this soon after the first is torchrun passing on the one the
ranks got directly too (a service manager signals every process), not a request to stop at once."""
STOP_GRACE_S = 10.0
"""After the workers were told to stop, how long the service waits for them before it exits anyway."""


def serve(config: ServeConfig, torchrun: tuple[int, int] | None = None) -> int:
    """Run the service until a signal or a fatal failure; returns the exit code (the last line printed).

    torchrun: (rank, world size) when the command runs under torchrun: rank 0 hosts the service
    around its own stage, every other rank runs its stage only (serve/torchrun.py)."""

    if torchrun is not None and torchrun[0] != 0:
        return serve_other_rank(World(*torchrun, config.run.transport.timeout_s), config.validate(listens=False))
    config.validate()
    state_dir = Path(config.state_dir)
    lock = _lock_state_dir(state_dir)
    for folder in (config.outputs_dir, config.uploads_dir):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = JobStore(config.database)
    recovered = jobs.recover()
    _sweep(config, jobs)
    listener = _bind(config.host, config.port)
    run = config.run
    state = ServiceState(run.job.total_steps)
    rank_zero = None
    if torchrun is None:
        store = loopback_store(run.transport.timeout_s)
    else:
        world = World(*torchrun, run.transport.timeout_s)
        offer_state_dir(world, config)
        store, rank_zero = world.store, RankZeroStage(world, config)
    metrics = ServiceMetrics()
    pipeline = Pipeline(config, jobs, state, store, metrics, torchrun=rank_zero)
    factor = pixels.model_scale_factor(run.model.model, weights=run.model.weights, revision=run.model.revision)
    service = Service(config, jobs, state, pipeline, Served.from_config(run, factor), metrics)
    http = _HttpThread(service, listener)
    received: list[int] = []
    got_signal = threading.Event()
    first_at: list[float] = []

    def on_signal(signum, _frame) -> None:
        now = time.monotonic()
        if rank_zero is not None and first_at and now - first_at[0] < ECHO_WINDOW_S:
            return  # torchrun passing on the signal this process got too (systemd signals the whole unit)
        first_at.append(now)
        received.append(signum)
        got_signal.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        http.start()
        pipeline.start()
        queued = jobs.count("queued")
        notice(
            f"serve: http://{_url_host(config.host)}:{listener.getsockname()[1]}/v1 · {run.model.model} "
            f"{service.served.size} x {service.served.frames} frames, {run.job.total_steps} steps, "
            f"{run.layout.strategy} on {run.layout.nproc} worker(s) · state in {state_dir}"
            + (f" · {queued} job(s) queued" if queued else "")
            + (f" ({recovered} were in flight when it last stopped)" if recovered else "")
        )
        while not got_signal.wait(0.2):
            if pipeline.finished.is_set() or not http.alive:
                break
        if received and rank_zero is not None and pipeline.blame_dead_peer():
            # torchrun stops every rank of this host because one of them died: a crash, not a drain.
            pipeline.finished.wait(STOP_GRACE_S)
            error_line(pipeline.fatal or rank_zero.fatal("a stage's process ended before it finished"))
            return 1
        if received:
            return _drain(config, pipeline, jobs, state, received)
        if not http.alive:
            error_line(f"the HTTP server stopped unexpectedly{http.reason}; the service stopped")
        else:
            error_line(pipeline.fatal or "the workers ended; the service stopped")
        pipeline.stop("the service is stopping")
        pipeline.finished.wait(STOP_GRACE_S)
        return 1
    finally:
        jobs.recover()  # whatever was still in flight is queued for the next start
        http.stop()
        jobs.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(lock)


def _drain(config: ServeConfig, pipeline: Pipeline, jobs: JobStore, state: ServiceState, received: list[int]) -> int:
    """A signal: finish the jobs in flight (up to --drain-timeout), keep the queue, one line."""
    signum = received[0]
    name = signal.Signals(signum).name
    flying = pipeline.in_flight_count()
    state.set_phase("draining", f"{name}: finishing {flying} job(s) in flight")
    notice(
        f"serve: {name}: accepting no new jobs; {flying} job(s) in flight finish first "
        f"(--drain-timeout {config.drain_timeout_s:g} s)"
    )
    pipeline.drain()
    deadline = time.monotonic() + config.drain_timeout_s
    cut_short = None
    while not pipeline.finished.wait(0.2):
        if len(received) > 1:
            cut_short = f"a second {signal.Signals(received[1]).name}"
            break
        if time.monotonic() >= deadline:
            cut_short = f"--drain-timeout {config.drain_timeout_s:g} s"
            break
    if cut_short is not None:
        left = pipeline.in_flight_count()
        pipeline.stop(f"the service is stopping ({cut_short})")
        pipeline.finished.wait(STOP_GRACE_S)
        jobs.recover()
        state.set_phase("stopped", name)
        queued = jobs.count("queued")
        error_line(
            f"interrupted by {name}: stopped after {cut_short}; {left} job(s) in flight go back to the queue, "
            f"{queued} queued job(s) are kept in {config.state_dir} for the next start"
        )
        return 128 + signum
    state.set_phase("stopped", name)
    queued = jobs.count("queued")
    error_line(
        f"interrupted by {name}: drained ({pipeline.drained} job(s) in flight finished); "
        f"{queued} queued job(s) are kept in {config.state_dir} for the next start"
    )
    return 128 + signum


class _HttpThread:
    """uvicorn in a thread of its own, on a socket bound beforehand (so a busy port is one line
    before anything starts). Off the main thread uvicorn installs no signal handlers: the service's own apply."""

    def __init__(self, service: Service, listener: socket.socket) -> None:
        # heavy: the ASGI stack (uvicorn, and starlette through the app), only once a server starts
        import uvicorn

        from ppsvd.serve.app import build_app

        self.listener = listener
        self.server = uvicorn.Server(
            uvicorn.Config(
                build_app(service),
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=3,
                timeout_keep_alive=5,
            )
        )
        self.reason = ""
        self.thread = threading.Thread(target=self._run, name="ppsvd-http", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.listener])
        except BaseException as exc:  # noqa: BLE001 - SystemExit from uvicorn included: the service reports it
            self.reason = f" ({type(exc).__name__}: {exc})"

    def start(self) -> None:
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); pick a free --port "
            "or an address of this machine"
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _lock_state_dir(state_dir: Path) -> int:
    """One server per state dir: two would run every job twice. An flock the kernel drops when the
    process dies, however it dies."""

    check_output_dir(state_dir, "--state-dir")
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"--state-dir {state_dir} is in use by another ppsvd serve; stop it first, or give this one "
            "another --state-dir"
        ) from None
    return fd


def _sweep(config: ServeConfig, jobs: JobStore) -> None:
    """At start: what a killed server or worker left half-done. Temp files of interrupted writes;
    uploads no row names (killed between the file and the commit); outputs of jobs that are not
    completed (deleted, or killed between the rename and the commit: the job runs again)."""

    for folder in (config.outputs_dir, config.uploads_dir):
        remove_temp_files(folder)
    known = jobs.all_ids()
    for upload in config.uploads_dir.iterdir():
        if upload.stem not in known:
            upload.unlink(missing_ok=True)
    completed = jobs.ids_with_status("completed")
    for path in config.outputs_dir.glob("*/video_*"):
        job_id = path.name.split(".")[0]
        if job_id not in completed:
            remove_outputs(config.outputs_dir, job_id)
