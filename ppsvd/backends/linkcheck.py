"""A live check of one transport between 2 local worker processes (used by `ppsvd doctor`).

The parent hosts a TCPStore on a free port and starts 2 workers that open the transport as
stages 0 and 1. Stage 0 sends latent-sized messages; stage 1 receives them and reports:

- latency: messages sent one at a time (stage 1 says "ready" through the store before each),
  one-way time = receive done - send start, both read from time.monotonic(), which is one
  system-wide clock for all processes of a host (CLOCK_MONOTONIC on Linux).
- bandwidth: `repeats` messages sent back to back, payload bits / time from the first send
  start to the last receive.

The whole check is bounded: the parent waits until a deadline, then SIGKILLs and joins the
workers and reports "timed out after Xs". Nothing here raises for a broken link: a failure is
a LinkResult with ok=False and the error in one line.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ppsvd import backends
from ppsvd.backends.deadline import Deadline, never
from ppsvd.config import DEFAULT_LATENT_SHAPE, TransportSection
from ppsvd.errors import ConfigError, TransportTimeout
from ppsvd.shapes import LatentShape

WARMUP_MESSAGES = 2
"""Sent before the timed ones: the first messages pay for lazy connection setup."""
_JOIN_S = 2.0


@dataclass
class LinkResult:
    transport: str
    endpoint: str
    """zmq: the address stage 1 bound (ipc://... or tcp://...); gloo/nccl: how the ranks met."""
    ok: bool
    latency_ms: float | None
    """Median one-way time of one message, from send start to receive done."""
    bandwidth_gbps: float | None
    """Gigabits per second of payload, messages sent back to back."""
    error: str | None
    elapsed_s: float


def check_link(
    transport: str,
    *,
    zmq_endpoint: str = "auto",
    payload_shape: tuple[int, ...] = LatentShape(*DEFAULT_LATENT_SHAPE).handoff(),
    dtype: str = "float16",
    repeats: int = 20,
    timeout_s: float = 10.0,
    _hang: bool = False,
) -> LinkResult:
    """Measure `transport` between 2 fresh local processes; never takes much longer than timeout_s.

    `_hang` (tests only) makes the receiving worker sleep instead of receiving.
    """
    start = time.monotonic()
    deadline = Deadline(timeout_s, what=f"the {transport} link check")
    _check_args(transport, zmq_endpoint, payload_shape, dtype, repeats, timeout_s)

    def failed(error: str, endpoint: str = "") -> LinkResult:
        return LinkResult(transport, endpoint, False, None, None, error, time.monotonic() - start)

    if transport == "nccl":
        reason = _nccl_unavailable()
        if reason:
            return failed(reason)

    from ppsvd.backends.hosts import loopback_store  # imports torch.distributed: only when a check actually runs

    store = loopback_store(timeout_s)  # listens on 127.0.0.1 only
    run_id = f"linkcheck-{uuid.uuid4().hex[:12]}"
    endpoint = _planned_endpoint(transport, zmq_endpoint, run_id, store.port)
    job = {
        "transport": transport,
        "port": store.port,
        "zmq_endpoint": zmq_endpoint,
        "payload_shape": tuple(payload_shape),
        "dtype": dtype,
        "repeats": repeats,
        "timeout_s": timeout_s,
        "run_id": run_id,
        "hang": _hang,
    }
    ctx = _context()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(rank, job, results), name=f"ppsvd-linkcheck-{rank}", daemon=True)
        for rank in (0, 1)
    ]
    try:
        for proc in workers:
            proc.start()
        reports, error = _collect(workers, results, deadline)
    finally:
        _stop(workers)
        _remove_ipc_file(endpoint)  # a killed worker cannot remove its own
        results.close()
        results.cancel_join_thread()  # never block on a queue a killed worker may have left half-written
        del store
    endpoint = reports.get(1, {}).get("endpoint") or endpoint
    if error:
        return failed(error, endpoint)
    receiver = reports[1]
    return LinkResult(
        transport=transport,
        endpoint=endpoint,
        ok=True,
        latency_ms=receiver["latency_ms"],
        bandwidth_gbps=receiver["bandwidth_gbps"],
        error=None,
        elapsed_s=time.monotonic() - start,
    )


def _planned_endpoint(transport: str, zmq_endpoint: str, run_id: str, store_port: int) -> str:
    """What the endpoint will be; replaced by what stage 1 actually bound when it reports."""
    if transport != "zmq":
        return f"{transport} between 2 local processes, rendezvous at 127.0.0.1:{store_port}"
    if zmq_endpoint == "tcp":
        return "tcp://127.0.0.1 (port not bound yet)"
    from ppsvd.backends.zmq import ipc_path  # heavy: imports torch

    return f"ipc://{ipc_path(run_id, 1)}"  # 'auto' is ipc: both workers run on this host


def _check_args(transport: str, zmq_endpoint: str, payload_shape, dtype: str, repeats: int, timeout_s: float) -> None:
    from ppsvd.backends.protocol import DTYPE_NAMES  # heavy: imports torch

    if transport not in backends.available():
        raise ConfigError(f"transport {transport!r} is not one of {', '.join(backends.available())}")
    if zmq_endpoint not in ("auto", "ipc", "tcp"):
        raise ConfigError(f"zmq endpoint {zmq_endpoint!r} is not one of auto, ipc, tcp")
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    if not all(isinstance(d, int) and d > 0 for d in payload_shape):
        raise ConfigError(f"payload shape {tuple(payload_shape)!r} must be positive integers")
    if repeats < 1:
        raise ConfigError(f"repeats {repeats} must be at least 1")
    if timeout_s <= 0:
        raise ConfigError(f"timeout {timeout_s:g} s must be positive")


def _nccl_unavailable() -> str | None:
    import torch  # heavy: torch

    if not torch.cuda.is_available():
        return "nccl needs CUDA, and torch sees no CUDA device"
    count = torch.cuda.device_count()
    if count < 2:
        return f"nccl link check needs 2 CUDA devices, this host has {count}"
    if not torch.distributed.is_nccl_available():
        return "this torch build has no NCCL"
    return None


# -- parent side --------------------------------------------------------------------------


def _context():
    """forkserver with torch preloaded where available, else spawn.

    Importing torch takes seconds (much longer on a busy machine), and two spawned workers
    would each pay it inside the check's deadline. The forkserver imports it once; every worker
    of this and later checks (doctor runs several) is a fork of that clean, single-threaded
    process. Never plain fork: the parent may hold threads and CUDA state.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Only takes effect if the forkserver is not running yet; replaces the default ['__main__'],
    # which would re-run the caller's main module in the server.
    ctx.set_forkserver_preload(
        ["torch", "torch.distributed", "ppsvd.backends.linkcheck", "ppsvd.backends.torch_p2p", "ppsvd.backends.zmq"]
    )
    return ctx


def _collect(workers: list, results, deadline: Deadline) -> tuple[dict[int, dict], str | None]:
    """Reports of both workers, or the first error; never waits past deadline."""
    reports: dict[int, dict] = {}
    while len(reports) < len(workers):
        try:
            report = results.get(timeout=deadline.slice(0.1))
        except TransportTimeout:
            missing = ", ".join(str(r) for r in range(len(workers)) if r not in reports)
            return reports, f"timed out after {deadline.timeout_s:g}s (worker {missing} did not finish)"
        except queue.Empty:
            dead = _died_silently(workers, reports, results)
            if dead:
                return reports, dead
            continue
        reports[report["rank"]] = report
        if not report["ok"]:
            return reports, f"stage {report['rank']}: {report['error']}"
    return reports, None


def _died_silently(workers: list, reports: dict, results) -> str | None:
    for rank, proc in enumerate(workers):
        if rank not in reports and proc.exitcode is not None:
            # It may have reported just before exiting: give the queue a moment.
            try:
                report = results.get(timeout=0.5)
            except queue.Empty:
                return f"worker {rank} exited with code {proc.exitcode} without reporting"
            reports[report["rank"]] = report
    return None


def _remove_ipc_file(endpoint: str) -> None:
    """A killed worker cannot remove its socket, nor the private directory it sits in."""
    if endpoint.startswith("ipc://"):
        shutil.rmtree(os.path.dirname(endpoint[len("ipc://") :]), ignore_errors=True)


def _stop(workers: list) -> None:
    for proc in workers:
        if proc.is_alive():
            proc.kill()  # SIGKILL: a worker stuck in a transport wait ignores nothing else reliably
    for proc in workers:
        if proc.pid is not None:
            proc.join(_JOIN_S)


# -- worker side --------------------------------------------------------------------------


def _worker(rank: int, job: dict[str, Any], results) -> None:
    transport = None
    try:
        transport = _open(rank, job)
        if rank == 0:
            _run_sender(transport, job)
            report: dict[str, Any] = {}
        else:
            report = _run_receiver(transport, job)
        results.put({"rank": rank, "ok": True, **report})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put({"rank": rank, "ok": False, "error": f"{type(exc).__name__}: {_one_line(exc)}"})
    finally:
        if transport is not None:
            transport.close()


def _open(rank: int, job: dict[str, Any]):
    import torch.distributed as dist  # heavy: torch

    from ppsvd.backends.base import StageWorld  # heavy: imports torch

    store = dist.TCPStore("127.0.0.1", job["port"], is_master=False, timeout=timedelta(seconds=job["timeout_s"]))
    world = StageWorld(
        rank=rank,
        world_size=2,
        local_rank=rank,
        local_world_size=2,
        store=store,
        device=f"cuda:{rank}" if job["transport"] == "nccl" else "cpu",
        transport=TransportSection(timeout_s=job["timeout_s"], zmq_endpoint=job["zmq_endpoint"]),
        run_id=job["run_id"],
    )
    transport = backends.load(job["transport"])(world)
    transport.open()
    return transport


def _payload(job: dict[str, Any], device: str):
    import torch  # heavy: torch

    from ppsvd.backends.protocol import DTYPE_NAMES  # heavy: imports torch

    dtype = DTYPE_NAMES[job["dtype"]]
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        data = torch.randn(job["payload_shape"], generator=gen).to(dtype)
    else:
        data = torch.randint(0, 100, job["payload_shape"], generator=gen).to(dtype)
    return data.to(device)


def _key(job: dict[str, Any], name: str) -> str:
    return f"{job['run_id']}/linkcheck/{name}"


def _run_sender(transport, job: dict[str, Any]) -> None:
    from ppsvd.backends.protocol import Message  # heavy: imports torch

    store = transport.world.store
    wait = timedelta(seconds=job["timeout_s"])
    payload = _payload(job, transport.world.device)
    count = WARMUP_MESSAGES + job["repeats"]
    # One at a time: wait until the receiver is in recv(), so no time is spent queued.
    for i in range(count):
        store.wait([_key(job, f"ready/{i}")], wait)
        msg = Message("sample", i, {"x": payload}, meta={"t": time.monotonic()})
        transport.send(msg, timeout_s=job["timeout_s"], cancelled=never)
    # Back to back, for bandwidth.
    store.wait([_key(job, "stream")], wait)
    for i in range(job["repeats"]):
        msg = Message("sample", count + i, {"x": payload}, meta={"t": time.monotonic()})
        transport.send(msg, timeout_s=job["timeout_s"], cancelled=never)
    transport.send(Message.end(count + job["repeats"]), timeout_s=job["timeout_s"], cancelled=never)


def _run_receiver(transport, job: dict[str, Any]) -> dict[str, Any]:
    from ppsvd.backends.protocol import TensorSpec  # heavy: imports torch

    store = transport.world.store
    expected = _payload(job, "cpu")
    schema = {"x": TensorSpec.of("x", expected)}
    count = WARMUP_MESSAGES + job["repeats"]

    def receive():
        msg = transport.recv(schema, timeout_s=job["timeout_s"], cancelled=never)
        return msg, time.monotonic()

    latencies = []
    for i in range(count):
        store.set(_key(job, f"ready/{i}"), "1")
        if job["hang"]:
            while True:  # test hook: a receiver that never receives
                time.sleep(3600)
        msg, arrived = receive()
        _check_message(msg, i, expected)
        if i >= WARMUP_MESSAGES:
            latencies.append(arrived - msg.meta["t"])

    store.set(_key(job, "stream"), "1")
    first_sent = None
    for i in range(job["repeats"]):
        msg, arrived = receive()
        first_sent = msg.meta["t"] if first_sent is None else first_sent
        _check_message(msg, count + i, expected)
    end, _ = receive()
    if not end.is_end:
        raise RuntimeError(f"expected the end of the stream, got {end.kind} {end.index}")
    payload_bits = expected.numel() * expected.element_size() * 8 * job["repeats"]
    return {
        "endpoint": getattr(transport, "bound_endpoint", None),
        "latency_ms": statistics.median(latencies) * 1000.0,
        "bandwidth_gbps": payload_bits / max(arrived - first_sent, 1e-9) / 1e9,
    }


def _check_message(msg, index: int, expected) -> None:
    import torch  # heavy: torch

    if msg.index != index:
        raise RuntimeError(f"message {msg.index} arrived where {index} was expected")
    if not torch.equal(msg.tensors["x"].cpu(), expected):
        raise RuntimeError(f"message {index} arrived corrupted: its payload differs from what was sent")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
