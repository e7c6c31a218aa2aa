"""Transports: a 3-stage chain delivers in order and bitwise equal; bad input is refused safely.

gloo needs one process per rank (one default process group per process): those tests spawn
workers that report back through a queue. ZeroMQ transports are independent objects, so their
tests run every rank as a thread of the test process (much faster than importing torch 3x).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import threading
import time
import traceback
import uuid
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import zmq

from ppsvd.backends import load
from ppsvd.backends.base import StageWorld
from ppsvd.backends.deadline import never
from ppsvd.backends.hosts import HostFacts, publish_host
from ppsvd.backends.protocol import HEADER_BYTES, Header, Message, TensorSpec, tensor_to_bytes
from ppsvd.backends.zmq import ZmqTransport, ipc_path, plan_link
from ppsvd.config import TransportSection
from ppsvd.errors import (
    Cancelled,
    ConfigError,
    ProtocolError,
    TransportError,
    TransportTimeout,
)

N_MESSAGES = 5
SHAPE = (2, 3, 4, 5)
SCHEMA = {"latents": TensorSpec("latents", "float32", SHAPE), "cond": TensorSpec("cond", "bfloat16", (7,))}


def sample(i: int) -> Message:
    """Message i, the same in every process: fp32 and bf16 tensors with awkward values."""
    gen = torch.Generator().manual_seed(1000 + i)
    latents = torch.randn(SHAPE, generator=gen) * 10 ** (i - 2)
    latents[0, 0, 0, 0] = float("nan") if i == 1 else -0.0
    cond = torch.randn(7, generator=gen).to(torch.bfloat16)
    return Message("sample", i, {"latents": latents, "cond": cond}, meta={"image": f"img{i}.png"})


def check_sample(msg: Message, i: int) -> None:
    want = sample(i)
    assert msg.kind == "sample" and msg.index == i, f"got {msg.kind} {msg.index}, expected sample {i}"
    assert list(msg.tensors) == list(want.tensors)
    for name, tensor in want.tensors.items():
        got = msg.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), f"{name} of sample {i} differs"
    assert msg.meta == want.meta


def client_world(rank: int, n: int, port: int, run_id: str, **kw) -> StageWorld:
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=30))
    defaults = {"device": "cpu", "run_id": run_id}
    defaults.update(kw)
    return StageWorld(
        rank=rank, world_size=n, local_rank=rank, local_world_size=n, store=store, **_with_transport(defaults)
    )


def _with_transport(kw: dict) -> dict:
    """StageWorld keywords with the transport section's options (timeout_s, ...) gathered into `transport`."""
    names = {f.name for f in dataclasses.fields(TransportSection)}
    section = {"timeout_s": 30.0, **{k: kw.pop(k) for k in list(kw) if k in names}}
    return {**kw, "transport": TransportSection(**section)}


@pytest.fixture
def store():
    """A store hosted by the test process on a free port; ranks connect to store.port as clients."""
    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    yield master
    del master


def run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# -- multi-process plumbing (gloo) ---------------------------------------------------------


def _spawned(target, rank: int, port: int, rid: str, results) -> None:
    """Run target(transport, rank) in a worker and put (rank, report) on the results queue."""
    transport = None
    try:
        transport = load("gloo")(client_world(rank, 3, port, rid))
        transport.open()
        report = target(transport, rank, results)
    except BaseException:  # noqa: BLE001 - the parent shows it
        report = {"error": traceback.format_exc()}
    then_sleep = report.pop("then_sleep", False)
    results.put((rank, report))
    if then_sleep:
        time.sleep(60)  # until the parent kills this process
    if transport is not None:
        transport.close()


def run_ranks(target, store, *, timeout_s: float = 45.0, on_report=None) -> dict[int, dict]:
    """Spawn 3 gloo ranks running target; collect their reports; kill whatever is left."""
    ctx = torch.multiprocessing.get_context("spawn")
    # One queue per rank: writers to a shared queue share a lock, and a rank killed while its
    # feeder thread still holds it would block the others' reports forever.
    queues = [ctx.Queue() for _ in range(3)]
    rid = run_id()
    procs = [ctx.Process(target=_spawned, args=(target, r, store.port, rid, queues[r]), daemon=True) for r in range(3)]
    for p in procs:
        p.start()
    reports: dict[int, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(reports) < 3 and time.monotonic() < deadline:
            for rank in set(range(3)) - set(reports):
                try:
                    _, reports[rank] = queues[rank].get(timeout=0.05)
                except queue.Empty:
                    continue
                if on_report is not None:
                    on_report(rank, procs[rank])
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
    for rank, report in reports.items():
        assert "error" not in report, f"rank {rank} failed:\n{report['error']}"
    assert len(reports) == 3, f"only ranks {sorted(reports)} reported within {timeout_s} s"
    return reports


def _chain_worker(transport, rank: int, results) -> dict:
    if rank == 0:
        for i in range(N_MESSAGES):
            transport.send(sample(i), timeout_s=20, cancelled=never)
        transport.send(Message.end(N_MESSAGES), timeout_s=20, cancelled=never)
        return {"sent": N_MESSAGES}
    if rank == 1:
        return _forward_with_two_threads(transport)
    received = []
    while not (msg := transport.recv(SCHEMA, timeout_s=20, cancelled=never)).is_end:
        check_sample(msg, len(received))
        received.append(msg.index)
    return {"received": received, "end_index": msg.index}


def _forward_with_two_threads(transport) -> dict:
    """Like a stage: one thread receives, another sends on, at the same time."""
    inbox: queue.Queue = queue.Queue(maxsize=2)
    errors: list[str] = []

    def receive() -> None:
        try:
            while True:
                msg = transport.recv(SCHEMA, timeout_s=20, cancelled=never)
                inbox.put(msg)
                if msg.is_end:
                    return
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())
            inbox.put(None)

    thread = threading.Thread(target=receive)
    thread.start()
    forwarded = 0
    while (msg := inbox.get(timeout=20)) is not None:
        transport.send(msg, timeout_s=20, cancelled=never)
        if msg.is_end:
            break
        forwarded += 1
    thread.join(20)
    if errors:
        raise RuntimeError(errors[0])
    return {"forwarded": forwarded}


@pytest.mark.timeout(90)
def test_gloo_chain_of_three_delivers_in_order_and_bitwise_equal(store):
    reports = run_ranks(_chain_worker, store)
    assert reports[1] == {"forwarded": N_MESSAGES}
    assert reports[2] == {"received": list(range(N_MESSAGES)), "end_index": N_MESSAGES}


def _failure_worker(transport, rank: int, results) -> dict:
    """rank 0 sends a header with the wrong shape to rank 1; rank 1 is then killed under rank 2."""
    from ppsvd.backends.torch_p2p import HEADER_TAG, PAYLOAD_TAG

    store = transport.world.store
    wait = timedelta(seconds=30)
    if rank == 0:
        store.wait(["bad-go"], wait)
        wrong = TensorSpec("latents", "float32", (2, 3, 4, 6))
        header = Header(kind="sample", index=0, tensors=(wrong, SCHEMA["cond"]), meta={})
        block = torch.frombuffer(bytearray(header.to_block()), dtype=torch.uint8)
        dist.isend(block, dst=1, group=transport._send_group, tag=HEADER_TAG).wait()
        # The payload of the size it declared: had rank 1 posted a receive of the size it
        # expects, gloo would abort rank 1's process on the mismatch.
        dist.isend(torch.zeros(2, 3, 4, 6), dst=1, group=transport._send_group, tag=PAYLOAD_TAG)
        store.wait(["rank1-done"], wait)
        return {}
    if rank == 1:
        outcome = {}
        start = time.monotonic()
        with pytest.raises(TransportTimeout):
            transport.recv(SCHEMA, timeout_s=0.5, cancelled=never)
        outcome["timeout_s"] = time.monotonic() - start

        start = time.monotonic()
        with pytest.raises(Cancelled):
            transport.recv(SCHEMA, timeout_s=20, cancelled=lambda: True)
        outcome["cancel_s"] = time.monotonic() - start

        store.set("bad-go", "1")
        with pytest.raises(ProtocolError, match=r"from stage 0: tensor 'latents' is float32\[2, 3, 4, 6\]") as bad:
            transport.recv(SCHEMA, timeout_s=20, cancelled=never)
        outcome["protocol_error"] = str(bad.value)
        with pytest.raises(TransportError, match="unusable"):
            transport.recv(SCHEMA, timeout_s=20, cancelled=never)  # never reads the payload as a header

        transport.send(sample(0), timeout_s=20, cancelled=never)  # still alive and well
        store.set("rank1-done", "1")
        outcome["then_sleep"] = True  # the parent kills this process as soon as it reads this
        return outcome
    check_sample(transport.recv(SCHEMA, timeout_s=20, cancelled=never), 0)
    start = time.monotonic()
    try:
        transport.recv(SCHEMA, timeout_s=25, cancelled=never)
    except TransportTimeout as exc:
        return {"error": f"a dead peer was only noticed by the timeout: {exc}"}
    except TransportError as exc:
        return {"dead_peer_s": time.monotonic() - start, "dead_peer_error": str(exc)}
    return {"error": "received a message from a dead peer"}


@pytest.mark.timeout(90)
def test_gloo_bad_header_timeout_cancel_and_dead_peer(store):
    def kill_rank1(rank, proc):
        if rank == 1:
            proc.kill()  # SIGKILL mid-run: rank 2 is waiting in recv()

    reports = run_ranks(_failure_worker, store, on_report=kill_rank1)
    rank1, rank2 = reports[1], reports[2]
    assert 0.5 <= rank1["timeout_s"] < 2.0
    assert rank1["cancel_s"] < 0.5
    assert "\n" not in rank1["protocol_error"]
    assert rank2["dead_peer_s"] < 10.0, rank2
    assert "stage 1" in rank2["dead_peer_error"]


# -- zmq: every rank a thread of this process ---------------------------------------------


def open_all(transports) -> None:
    """open() is collective (stage k waits for k+1's endpoint): run them side by side."""
    errors: list[BaseException] = []

    def open_one(t) -> None:
        try:
            t.open()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(t,)) for t in transports]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    if errors:
        raise errors[0]


def zmq_chain(store, n: int, endpoint: str) -> list[ZmqTransport]:
    rid = run_id()
    transports = [ZmqTransport(client_world(r, n, store.port, rid, zmq_endpoint=endpoint)) for r in range(n)]
    open_all(transports)
    return transports


@pytest.mark.timeout(60)
@pytest.mark.parametrize("endpoint", ["ipc", "tcp"])
def test_zmq_chain_of_three_delivers_in_order_and_bitwise_equal(store, endpoint):
    transports = zmq_chain(store, 3, endpoint)
    first, middle, last = transports
    scheme = "ipc://" if endpoint == "ipc" else "tcp://127.0.0.1:"
    assert middle.bound_endpoint.startswith(scheme) and last.bound_endpoint.startswith(scheme)
    results: dict[str, object] = {}

    def stage0() -> None:
        for i in range(N_MESSAGES):
            first.send(sample(i), timeout_s=10, cancelled=never)
        first.send(Message.end(N_MESSAGES), timeout_s=10, cancelled=never)

    def stage1() -> None:
        results["forwarded"] = _forward_with_two_threads(middle)

    def stage2() -> None:
        received = []
        while not (msg := last.recv(SCHEMA, timeout_s=10, cancelled=never)).is_end:
            check_sample(msg, len(received))
            received.append(msg.index)
        results["received"] = received

    threads = [threading.Thread(target=f) for f in (stage0, stage1, stage2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == {"forwarded": {"forwarded": N_MESSAGES}, "received": list(range(N_MESSAGES))}

    files = [t._ipc_path for t in transports if t._ipc_path]
    for t in transports:
        t.close()
        t.close()  # twice is fine
    assert all(not os.path.exists(f) for f in files)
    if endpoint == "ipc":
        assert len(files) == 2


def test_zmq_large_message_arrives_intact_and_the_buffer_is_free_after_send(store):
    first, last = zmq_chain(store, 2, "ipc")
    big = torch.arange(3 * 2**20, dtype=torch.float32)  # 12 MiB
    first.send(Message("sample", 0, {"x": big}), timeout_s=10, cancelled=never)
    big.zero_()  # send() returned: the buffer is the caller's again
    got = last.recv({"x": TensorSpec.of("x", big)}, timeout_s=10, cancelled=never)
    assert torch.equal(got.tensors["x"], torch.arange(3 * 2**20, dtype=torch.float32))
    first.close()
    last.close()


def test_zmq_end_waits_until_the_next_stage_received_it(store):
    first, last = zmq_chain(store, 2, "ipc")
    start = time.monotonic()
    with pytest.raises(TransportTimeout, match="stage 1 confirming it received the end of the stream"):
        first.send(Message.end(0), timeout_s=0.3, cancelled=never)  # queued, but nobody reads it
    assert time.monotonic() - start < 1.0
    assert last.recv(SCHEMA, timeout_s=5, cancelled=never).is_end
    first.close()
    last.close()


@pytest.fixture
def receiver(store):
    """Stage 1 of 2, bound and listening; the test plays stage 0 with a raw PUSH socket (it says
    where it runs and publishes its CURVE key, as stage 0 would)."""
    rid = run_id()
    world = client_world(1, 2, store.port, rid, zmq_endpoint="tcp")
    publish_host(store, rid, 0)
    public, secret = zmq.curve_keypair()
    store.set(f"{rid}/zmq/1/client-key", public)
    transport = ZmqTransport(world, max_payload_bytes=2**20)
    transport.open()
    ctx = zmq.Context()
    push = curve_push(ctx, transport.bound_endpoint, store.get(f"{rid}/zmq/1/server-key"), (public, secret))
    yield transport, push
    push.close(0)
    ctx.term()
    transport.close()


def curve_push(ctx, endpoint: str, server_key: bytes, keys: tuple[bytes, bytes] | None):
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        push.curve_serverkey = server_key
        push.curve_publickey, push.curve_secretkey = keys
    push.connect(endpoint)
    return push


@pytest.mark.timeout(30)
def test_zmq_tcp_admits_only_the_sending_stage(receiver, store):
    """Frames from anyone but stage 0 never reach recv: without CURVE, or with a key of its own
    (even knowing the server's public key), the handshake fails before a frame is read."""
    transport, push = receiver
    rid = transport.world.run_id
    ctx = zmq.Context()
    intruders = [
        curve_push(ctx, transport.bound_endpoint, b"", None),
        curve_push(ctx, transport.bound_endpoint, store.get(f"{rid}/zmq/1/server-key"), zmq.curve_keypair()),
    ]
    for intruder in intruders:
        if intruder.poll(200, zmq.POLLOUT):
            try:  # the refused handshake may drop the pipe between poll and send: then nothing is sent at all
                intruder.send_multipart(good_frames(0), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
    with pytest.raises(TransportTimeout):
        transport.recv(SCHEMA, timeout_s=1.0, cancelled=never)
    push.send_multipart(good_frames(4))  # the real sender still gets through
    check_sample(transport.recv(SCHEMA, timeout_s=5, cancelled=never), 4)
    for intruder in intruders:
        intruder.close(0)
    ctx.term()


def good_frames(i: int = 0) -> list:
    msg = sample(i)
    return [msg.header().to_bytes()] + [bytes(tensor_to_bytes(t)) for t in msg.tensors.values()]


def bad_header(**changes) -> bytes:
    header = sample(0).header()
    fields = {"kind": header.kind, "index": header.index, "tensors": header.tensors, "meta": header.meta}
    fields.update(changes)
    return Header(**fields).to_bytes()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


BAD_MESSAGES = {
    "oversized header frame": lambda f: [b"PPSV" + bytes(HEADER_BYTES * 2)] + f[1:],
    "bad magic": lambda f: [b"XXXX" + f[0][4:]] + f[1:],
    "pickle instead of a header": lambda f: [pickle.dumps(Evil())] + f[1:],
    "pickle as a tensor frame": lambda f: [f[0], pickle.dumps(Evil()), f[2]],
    "missing frame": lambda f: f[:2],
    "extra frame": lambda f: f + [b"\x00" * 4],
    "short tensor frame": lambda f: [f[0], f[1][:-4], f[2]],
    "wrong shape": lambda f: (
        [bad_header(tensors=(TensorSpec("latents", "float32", (2, 3, 4, 6)), SCHEMA["cond"]))] + f[1:]
    ),
    "missing tensor": lambda f: [bad_header(tensors=(SCHEMA["latents"],))] + f[1:2],
    "over the payload limit": lambda f: (
        [bad_header(tensors=(TensorSpec("latents", "float32", (2**20,)), SCHEMA["cond"]))] + f[1:]
    ),
}


@pytest.mark.timeout(30)
def test_zmq_rejects_every_malformed_message_without_unpickling(receiver, monkeypatch):
    transport, push = receiver

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a transport unpickled received bytes")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)

    for name, make in BAD_MESSAGES.items():
        push.send_multipart(make(good_frames()))
        with pytest.raises(ProtocolError, match="from stage 0") as exc:
            transport.recv(SCHEMA, timeout_s=5, cancelled=never)
        assert "\n" not in str(exc.value), name
    # Each bad message was consumed whole: the stream is still in step.
    push.send_multipart(good_frames(3))
    check_sample(transport.recv(SCHEMA, timeout_s=5, cancelled=never), 3)


@pytest.mark.timeout(30)
def test_zmq_frame_over_max_size_is_dropped_before_it_is_buffered(receiver):
    transport, push = receiver
    push.send_multipart([good_frames()[0], bytes(2**20 + 1)])  # MAXMSGSIZE disconnects the peer
    with pytest.raises(TransportTimeout):
        transport.recv(SCHEMA, timeout_s=0.5, cancelled=never)
    push.send_multipart(good_frames(2))  # PUSH reconnects by itself
    check_sample(transport.recv(SCHEMA, timeout_s=5, cancelled=never), 2)


def test_zmq_recv_timeout_and_cancel_are_prompt(receiver):
    transport, _ = receiver
    start = time.monotonic()
    with pytest.raises(TransportTimeout, match="within 0.3 s"):
        transport.recv(SCHEMA, timeout_s=0.3, cancelled=never)
    assert 0.3 <= time.monotonic() - start < 1.0
    start = time.monotonic()
    with pytest.raises(Cancelled):
        transport.recv(SCHEMA, timeout_s=30, cancelled=lambda: True)
    assert time.monotonic() - start < 0.2

    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        transport.recv(SCHEMA, timeout_s=30, cancelled=flag.is_set)
    assert time.monotonic() - start < 0.5


def test_zmq_send_to_a_stage_that_is_not_listening_times_out(store):
    rid = run_id()
    world = client_world(0, 2, store.port, rid, zmq_endpoint="tcp")
    with socket_on_free_port() as port:
        store.set(f"{rid}/zmq/1/server-key", zmq.curve_keypair()[0])
        store.set(f"{rid}/zmq/1", f"tcp://127.0.0.1:{port}")  # nobody accepts there
    sender = ZmqTransport(world)
    sender.open()
    start = time.monotonic()
    with pytest.raises(TransportTimeout, match="send of sample 0 to stage 1"):
        sender.send(sample(0), timeout_s=0.3, cancelled=never)
    assert time.monotonic() - start < 1.0
    with pytest.raises(Cancelled):
        sender.send(sample(0), timeout_s=30, cancelled=lambda: True)
    start = time.monotonic()
    sender.close()  # LINGER 0: never blocks on what could not be sent
    assert time.monotonic() - start < 1.0


def test_zmq_open_times_out_when_the_next_stage_never_publishes(store):
    sender = ZmqTransport(client_world(0, 2, store.port, run_id(), timeout_s=0.3))
    with pytest.raises(TransportTimeout, match="stage 1 publishing its zmq endpoint"):
        sender.open()
    sender.close()


def test_zmq_ipc_refuses_a_path_that_already_exists(store):
    rid = run_id()
    path = ipc_path(rid, 1)
    os.mkdir(os.path.dirname(path), 0o700)
    open(path, "w").close()
    try:
        world = client_world(1, 2, store.port, rid, zmq_endpoint="ipc")
        publish_host(store, rid, 0)
        transport = ZmqTransport(world)
        with pytest.raises(ConfigError, match="already exists"):
            transport.open()
        assert os.path.exists(path)  # not ours: left alone
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def test_zmq_ipc_sockets_live_in_a_private_directory(store):
    first, last = zmq_chain(store, 2, "ipc")
    directory = os.path.dirname(last._ipc_path)
    assert os.stat(directory).st_mode & 0o777 == 0o700
    first.close()
    last.close()
    assert not os.path.exists(directory)
    # A directory others can enter (or not ours) is refused, never used.
    rid = run_id()
    os.mkdir(os.path.dirname(ipc_path(rid, 1)), 0o755)
    try:
        publish_host(store, rid, 0)
        with pytest.raises(ConfigError, match="not a private"):
            ZmqTransport(client_world(1, 2, store.port, rid, zmq_endpoint="ipc")).open()
    finally:
        os.rmdir(os.path.dirname(ipc_path(rid, 1)))


def test_zmq_link_plan_follows_where_the_peer_runs(monkeypatch, tmp_path):
    def world(**kw) -> StageWorld:
        base = {"rank": 1, "world_size": 4, "local_rank": 0, "local_world_size": 2, "store": None}
        base.update(kw)
        return StageWorld(**_with_transport(base))

    here = HostFacts("a", network="n1", files="n1/m1", processes="p1", pid=1, started="1")
    same_box_other_agent = HostFacts("a", network="n1", files="n1/m1", processes="p1", pid=2, started="1")
    container = HostFacts("a", network="n1", files="n1/m2", processes="p2", pid=2, started="1")
    elsewhere = HostFacts("b", network="n2", files="n2/m1", processes="p3", pid=2, started="1")

    def route() -> str:
        return "10.0.0.5"

    # Two agents on one machine are one host, whatever --nnodes says (issue 13).
    assert plan_link(world(), here, same_box_other_agent).kind == "ipc"
    assert plan_link(world(zmq_endpoint="tcp"), here, same_box_other_agent).bind_host == "127.0.0.1"
    assert plan_link(world(bind_host="127.0.0.1", zmq_endpoint="tcp"), here, same_box_other_agent).warning is None
    assert plan_link(world(), here, container) == plan_link(world(zmq_endpoint="tcp"), here, container)
    assert plan_link(world(), here, container).bind_host == "127.0.0.1"
    # Another host: tcp on this host's address toward the store, or exactly --bind-host.
    assert plan_link(world(), here, elsewhere, route=route).bind_host == "10.0.0.5"
    explicit = plan_link(world(bind_host="127.0.0.1"), here, elsewhere, route=route)
    assert explicit.bind_host == "127.0.0.1" and "runs on b" in explicit.warning
    assert plan_link(world(bind_host="10.1.1.1"), here, elsewhere).bind_host == "10.1.1.1"
    with pytest.raises(ConfigError, match="--bind-host"):
        plan_link(world(), here, elsewhere, route=lambda: None)
    with pytest.raises(ConfigError, match="one host"):
        plan_link(world(zmq_endpoint="ipc"), here, elsewhere)
    with pytest.raises(ConfigError, match="'udp'"):
        plan_link(world(zmq_endpoint="udp"), here, here)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / ("x" * 120)))
    with pytest.raises(ConfigError, match="socket path limit"):
        ipc_path("r", 0)


def test_first_and_last_stage_have_one_link(store):
    first, last = zmq_chain(store, 2, "ipc")
    with pytest.raises(TransportError, match="no previous stage"):
        first.recv(SCHEMA, timeout_s=1, cancelled=never)
    with pytest.raises(TransportError, match="no next stage"):
        last.send(sample(0), timeout_s=1, cancelled=never)
    first.close()
    last.close()


class socket_on_free_port:
    """A port that was free a moment ago (bound, then released on exit)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("endpoint", ["ipc", "tcp"])
def test_zmq_sender_closing_right_after_end_loses_nothing(store, endpoint):
    """Stage 0 closes (LINGER 0) as soon as its last send returns, while stage 1 is still busy:
    every message, END included, must already be out of stage 0's queues by then."""
    first, last = zmq_chain(store, 2, endpoint)
    big = 15_000  # 60 kB: copied, not zero-copy; enough of them fill the socket buffers
    schema = {"x": TensorSpec("x", "float32", (big,))}
    n = 40

    def stage0() -> None:
        for i in range(n):
            first.send(Message("sample", i, {"x": torch.full((big,), float(i))}), timeout_s=20, cancelled=never)
        first.send(Message.end(n), timeout_s=20, cancelled=never)
        first.close()

    sender = threading.Thread(target=stage0)
    sender.start()
    received = []
    time.sleep(0.3)  # busy computing: nothing read yet
    while True:
        msg = last.recv(schema, timeout_s=5, cancelled=never)
        if msg.is_end:
            break
        assert torch.equal(msg.tensors["x"], torch.full((big,), float(msg.index)))
        received.append(msg.index)
        time.sleep(0.02)
    sender.join(10)
    last.close()
    assert received == list(range(n))
