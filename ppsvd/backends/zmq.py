"""ZeroMQ transport: PUSH -> PULL per adjacent pair, over ipc (one host) or tcp.

Wire, per message (one multipart message, delivered whole or not at all): frame 0 is the
JSON header (protocol.Header.to_bytes), then one raw frame per tensor in header order. The
receiver checks the header frame's size before parsing it, the header against its schema, the
frame count and each frame's length; anything unexpected is a ProtocolError. Nothing received is
ever unpickled (no recv_pyobj, no torch.load): see vLLM CVE-2025-30165.

Stage k > 0 binds a PULL socket and publishes its endpoint in the store under
"<run_id>/zmq/<k>"; stage k < N-1 connects a PUSH socket to the endpoint of stage k+1.

Where a link goes is decided from facts (backends/hosts.py): stage k reads where stage k-1 runs
and binds ipc when both share a host's files, else tcp; without --bind-host, tcp binds loopback
when both share a network namespace, else this host's address on the route to the store. An
explicit --bind-host is always honoured (with a warning when the peer provably cannot reach it).

Only the expected peer gets a frame in: ipc sockets live in a private 0700 directory (other users
cannot connect), and tcp links use CurveZMQ: each end makes a fresh keypair, the public keys
travel through the run's store, and the receiving stage's ZAP handler admits only the one key
its sending stage published; anyone else's handshake fails before a frame is read. (The store
itself is the trust root: see docs/multinode.md.)

ZeroMQ's defaults are unsafe for us, so every option that matters is set: LINGER 0 (close never
blocks), small high-water marks (back-pressure instead of unbounded queues), IMMEDIATE on PUSH
(never queue to a peer that is not connected), MAXMSGSIZE when a payload limit is given (a peer
sending a huge frame is disconnected before it is buffered). ZeroMQ never reports a dead peer,
so every wait polls in slices of at most 50 ms, checking cancellation and the deadline.

send() copies a sample into ZeroMQ and returns once it is queued (at most SNDHWM messages
wait: that is the back-pressure). send() of END returns only when the next stage has received
it (it sets "<run_id>/zmq/<k>/end-received" in the store), so close() with LINGER 0 right after
END loses nothing. Messages still queued when close() runs without an END are dropped: that is
an abort.

Each socket is used by one thread only (PUSH by the send thread, PULL by the receive thread);
both are created in open(), which is allowed because thread start is a memory barrier.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket as pysocket
import stat
import sys
import tempfile
from dataclasses import dataclass

import torch
import zmq
from zmq.auth.thread import ThreadAuthenticator

from ppsvd.backends.base import StageWorld, Transport, wait_for
from ppsvd.backends.deadline import CancelCheck, Deadline
from ppsvd.backends.hosts import HostFacts, publish_host, read_host, route_address
from ppsvd.backends.protocol import (
    HEADER_BYTES,
    Message,
    Schema,
    check_against_schema,
    parse_header,
    tensor_from_bytes,
    tensor_to_bytes,
)
from ppsvd.errors import (
    ConfigError,
    ProtocolError,
    TransportError,
)

HWM = 4
"""Messages queued per socket before a send waits: enough to overlap, small enough to bound memory."""
POLL_SLICE_S = 0.05
"""Longest a single poll blocks before cancellation and the deadline are checked again."""
_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class ZmqTransport(Transport):
    """PUSH to the next stage, PULL from the previous one; CPU tensors on the wire and on receipt."""

    name = "zmq"

    def __init__(self, world: StageWorld, *, max_payload_bytes: int | None = None) -> None:
        super().__init__(world, max_payload_bytes=max_payload_bytes)
        self._ctx: zmq.Context | None = None
        self._pull: zmq.Socket | None = None  # from stage k-1; used by the receive thread only
        self._push: zmq.Socket | None = None  # to stage k+1; used by the send thread only
        self._ipc_path: str | None = None  # the file our ipc bind created, removed on close
        self._auth = None  # the ZAP handler admitting only stage k-1's CURVE key (tcp)
        self._client_keys: tuple[bytes, bytes] | None = None  # our CURVE keypair toward stage k+1
        self.bound_endpoint: str | None = None
        self.peer_endpoint: str | None = None

    @property
    def endpoint(self) -> str:
        """This stage's inbound endpoint (or the one it sends to, for stage 0)."""
        return self.bound_endpoint or self.peer_endpoint or "unopened"

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        if self._ctx is not None:
            return
        world = self.world
        check_endpoint_choice(world.transport.zmq_endpoint)
        me = publish_host(world.store, world.run_id, world.rank)
        self._ctx = zmq.Context()
        try:
            if not world.is_last:
                # Published first, so stage k+1 can admit exactly us whenever it binds.
                self._client_keys = zmq.curve_keypair()
                world.store.set(_client_key(world, world.next_rank), self._client_keys[0])
            if not world.is_first:
                peer = self._wait_for_host(world.prev_rank)

                def route() -> str:  # asked only when a tcp link needs this host's address
                    return route_address(getattr(world.store, "host", "127.0.0.1"))

                link = plan_link(world, me, peer, route=route)
                if link.warning:
                    print(f"ppsvd: warning: {link.warning}", file=sys.stderr, flush=True)
                self._bind_pull(link)
            if not world.is_last:
                self._connect_push()
        except BaseException:
            self.close()
            raise

    def _wait_for_host(self, rank: int) -> HostFacts:
        self._wait_key(f"{self.world.run_id}/host/{rank}", f"stage {rank} saying where it runs")
        facts = read_host(self.world.store, self.world.run_id, rank)
        if facts is None:
            raise TransportError(f"cannot read where stage {rank} runs from the store")
        return facts

    def _wait_key(self, key: str, what: str) -> bytes:
        # Poll with check() rather than a blocking store.wait(): a TCPStore client serves one
        # request at a time, so a long wait would stall every other user of the same store.
        try:
            wait_for(
                lambda: self.world.store.check([key]),
                Deadline(self.world.transport.timeout_s, what=what),
                max_poll_s=0.05,
            )
            return self.world.store.get(key)
        except RuntimeError as exc:  # DistStoreError: the store is gone
            raise TransportError(f"cannot read {what} from the store: {exc}") from None

    def _bind_pull(self, link: LinkPlan) -> None:
        sock = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        if self.max_payload_bytes is not None:
            # Per frame: a header or one tensor can never be larger than this.
            sock.setsockopt(zmq.MAXMSGSIZE, max(HEADER_BYTES, self.max_payload_bytes))
        self._pull = sock
        if link.kind == "ipc":
            path = ipc_path(self.world.run_id, self.world.rank)
            private_dir(os.path.dirname(path))
            if os.path.exists(path):
                # A second bind to an ipc path silently takes it over from the first owner.
                raise ConfigError(
                    f"zmq ipc socket {path} already exists: another run with run id {self.world.run_id!r} is using it, "
                    "or a crashed run left it behind (delete it, or use a different run id)"
                )
            sock.bind(f"ipc://{path}")
            self._ipc_path = path
        else:
            self._admit_only(
                sock, _client_key(self.world, self.world.rank), f"stage {self.world.prev_rank}'s CURVE key"
            )
            host = link.bind_host
            if _is_ipv6(host):
                sock.setsockopt(zmq.IPV6, 1)
                host = f"[{host}]"
            try:
                sock.bind(f"tcp://{host}:*")
            except zmq.ZMQError as exc:
                raise ConfigError(
                    f"cannot bind zmq to {link.bind_host!r} (--bind-host): {exc}; pass an address of this host"
                ) from None
        self.bound_endpoint = _advertised(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.world.store.set(_store_key(self.world, self.world.rank), self.bound_endpoint)

    def _admit_only(self, sock: zmq.Socket, key: str, what: str) -> None:
        """Make sock a CURVE server whose ZAP handler admits only the public key under `key`."""

        expected = self._wait_key(key, what)
        public, secret = zmq.curve_keypair()
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=_OneKey(expected))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        self.world.store.set(_server_key(self.world, self.world.rank), public)  # before the endpoint

    def _connect_push(self) -> None:
        peer = self.world.next_rank
        endpoint = self._wait_key(_store_key(self.world, peer), f"stage {peer} publishing its zmq endpoint").decode()
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if endpoint.startswith("tcp://"):
            sock.curve_serverkey = self._wait_key(_server_key(self.world, peer), f"stage {peer}'s CURVE key")
            sock.curve_publickey, sock.curve_secretkey = self._client_keys
        if endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(endpoint)
        self._push = sock
        self.peer_endpoint = endpoint

    def close(self) -> None:
        for sock in (self._pull, self._push):
            if sock is not None:
                sock.close(linger=0)
        self._pull = self._push = None
        if self._ipc_path is not None:
            try:
                os.unlink(self._ipc_path)
            except FileNotFoundError:
                pass
            try:
                os.rmdir(os.path.dirname(self._ipc_path))  # the last stage of this host to leave removes it
            except OSError:
                pass
            self._ipc_path = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()  # does not block: every socket is closed with linger 0
            self._ctx = None

    # -- send -----------------------------------------------------------------------------

    def send(self, msg: Message, *, timeout_s: float, cancelled: CancelCheck) -> None:
        if self._push is None:
            raise TransportError(f"stage {self.world.rank} has no next stage to send to (or the transport is closed)")
        peer = self.world.next_rank
        what = f"send of {msg.kind} {msg.index} to stage {peer}"
        head = msg.header().to_bytes()
        if len(head) > HEADER_BYTES:
            raise ProtocolError(f"header of {len(head)} bytes exceeds {HEADER_BYTES}; keep message meta small")
        # Frames are copied into ZeroMQ messages, so the caller may reuse its tensors as soon as
        # send() returns (measured: for latent-sized frames a copy is cheaper than pyzmq's
        # zero-copy tracking, which costs a garbage-collector thread round trip per message).
        parts = [head] + [tensor_to_bytes(t) for t in msg.tensors.values()]
        deadline = Deadline(timeout_s, what=what, cancelled=cancelled)
        while True:
            _poll(self._push, zmq.POLLOUT, deadline)
            try:
                self._push.send_multipart(parts, flags=zmq.NOBLOCK, copy=True)
                break
            except zmq.Again:
                continue  # the queue filled up between poll and send; poll again
        if msg.is_end:
            self._wait_end_received(deadline)

    def _wait_end_received(self, deadline: Deadline) -> None:
        """Wait until the next stage has received END (it says so in the store).

        ZeroMQ cannot tell when a message has reached the peer, and close() with LINGER 0 drops
        whatever is still queued: while the next stage is busy, that is the tail of the stream.
        So the stream ends with a handshake, like gloo's send, which completes only when the
        receiver has taken the message.
        """
        peer = self.world.next_rank
        key = _end_key(self.world, peer)
        # Under the send's deadline: the handshake is part of sending END.
        confirmed = deadline.part(f"stage {peer} confirming it received the end of the stream")
        wait_for(lambda: self.world.store.check([key]), confirmed, max_poll_s=0.02)

    # -- recv -----------------------------------------------------------------------------

    def recv(self, schema: Schema | None, *, timeout_s: float, cancelled: CancelCheck) -> Message:
        if self._pull is None:
            raise TransportError(
                f"stage {self.world.rank} has no previous stage to receive from (or the transport is closed)"
            )
        peer = self.world.prev_rank
        deadline = Deadline(timeout_s, what=f"receive from stage {peer}", cancelled=cancelled)
        while True:
            _poll(self._pull, zmq.POLLIN, deadline)
            try:
                frames = self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                continue
        try:
            msg = self._decode(frames, schema)
        except ProtocolError as exc:
            raise ProtocolError(f"from stage {peer}: {exc}") from None
        if msg.is_end:
            self.world.store.set(_end_key(self.world, self.world.rank), "1")  # the sender waits for this
        return msg

    def _decode(self, frames: list[zmq.Frame], schema: Schema | None) -> Message:
        head = frames[0].buffer
        if head.nbytes > HEADER_BYTES:
            raise ProtocolError(f"header frame of {head.nbytes} bytes exceeds {HEADER_BYTES}")
        header = parse_header(head)
        check_against_schema(header, schema, max_payload_bytes=self.max_payload_bytes)
        if len(frames) != len(header.tensors) + 1:
            raise ProtocolError(
                f"message has {len(frames) - 1} tensor frames, its header declares {len(header.tensors)}"
            )
        tensors = {spec.name: _tensor(spec, frame) for spec, frame in zip(header.tensors, frames[1:], strict=True)}
        return Message(kind=header.kind, index=header.index, tensors=tensors, meta=dict(header.meta))


@dataclass(frozen=True)
class LinkPlan:
    """How stage k binds the link from stage k-1: 'ipc', or 'tcp' on bind_host."""

    kind: str
    bind_host: str | None = None
    warning: str | None = None


def check_endpoint_choice(choice: str) -> None:
    if choice not in ("auto", "ipc", "tcp"):
        raise ConfigError(f"--zmq-endpoint {choice!r} is not one of auto, ipc, tcp")


def plan_link(world: StageWorld, me: HostFacts, peer: HostFacts, *, route=lambda: None) -> LinkPlan:
    """Pure: how stage world.rank binds its inbound link, given where it and stage rank-1 run.

    route() is this host's address toward the store, asked only when it is needed."""
    check_endpoint_choice(world.transport.zmq_endpoint)
    rank, sender = world.rank, world.prev_rank
    choice = world.transport.zmq_endpoint
    if choice == "auto":
        choice = "ipc" if me.shares_files(peer) else "tcp"
    if choice == "ipc":
        if not me.shares_files(peer):
            raise ConfigError(
                f"--zmq-endpoint ipc needs both ends of a link on one host, but stage {sender} runs on "
                f"{peer.hostname} and stage {rank} on {me.hostname}: use --zmq-endpoint tcp or auto"
            )
        return LinkPlan("ipc")
    if world.transport.bind_host is not None:
        warning = None
        if _is_loopback(world.transport.bind_host) and not me.shares_loopback(peer):
            warning = (
                f"stage {rank} binds zmq on loopback ({world.transport.bind_host}, --bind-host) but stage {sender}, "
                "which "
                f"sends to it, runs on {peer.hostname}: it cannot connect; pass an address of {me.hostname} it can "
                "reach"
            )
        return LinkPlan("tcp", world.transport.bind_host, warning)
    if me.shares_loopback(peer):
        return LinkPlan("tcp", "127.0.0.1")
    address = route()
    if address is None or _is_loopback(address):
        raise ConfigError(
            f"stage {rank} on {me.hostname} cannot tell which of its addresses stage {sender} on {peer.hostname} "
            "can reach: pass --bind-host <this host's address>"
        )
    return LinkPlan("tcp", address)


def ipc_dir(run_id: str) -> str:
    """The run's private socket directory on this host (named by a digest: the run id is a secret)."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"ppsvd-{digest}")


def ipc_path(run_id: str, rank: int) -> str:
    path = os.path.join(ipc_dir(run_id), f"{rank}.sock")
    if len(path) > _IPC_PATH_MAX:
        raise ConfigError(
            f"zmq ipc path {path} is {len(path)} characters, over the {_IPC_PATH_MAX}-character socket path limit; "
            "set TMPDIR to a shorter directory"
        )
    return path


def private_dir(path: str) -> None:
    """Create `path` as a 0700 directory, or accept it only if it already is one of ours.

    Stages of one host share it (the first creates it); a directory someone else made, or one
    others can enter, would let them connect to our sockets."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"zmq socket directory {path} exists but is not a private (0700) directory of this user; "
            "remove it or set TMPDIR elsewhere"
        )


def remove_ipc_dir(run_id: str) -> None:
    """Remove the run's socket directory and whatever a killed stage left in it."""

    shutil.rmtree(ipc_dir(run_id), ignore_errors=True)


class _OneKey:
    """ZAP credentials: exactly one client public key (Z85) is admitted."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.key


def _store_key(world: StageWorld, rank: int) -> str:
    return f"{world.run_id}/zmq/{rank}"


def _client_key(world: StageWorld, rank: int) -> str:
    """The CURVE public key of the stage that sends to stage `rank`."""
    return f"{world.run_id}/zmq/{rank}/client-key"


def _server_key(world: StageWorld, rank: int) -> str:
    """The CURVE public key of stage `rank`'s inbound socket."""
    return f"{world.run_id}/zmq/{rank}/server-key"


def _end_key(world: StageWorld, rank: int) -> str:
    """Set by stage `rank` when it has received the end of the stream."""
    return f"{world.run_id}/zmq/{rank}/end-received"


def _poll(sock: zmq.Socket, event: int, deadline: Deadline) -> None:
    """Block until sock is ready for event, in slices that check cancellation and the deadline."""
    while not sock.poll(int(deadline.slice(POLL_SLICE_S) * 1000) + 1, event):
        pass


def _tensor(spec, frame: zmq.Frame) -> torch.Tensor:
    # Zero-copy view of the received frame (the tensor keeps the frame alive). Small frames
    # can sit at any offset in ZeroMQ's shared receive buffer: copy those that are misaligned.
    tensor = tensor_from_bytes(spec, frame.buffer)
    if tensor.numel() and tensor.data_ptr() % tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _advertised(endpoint: str) -> str:
    """The endpoint a peer should connect to: a wildcard bind is published as this host's name."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{pysocket.gethostname()}:{endpoint[len(wildcard) :]}"
    return endpoint
