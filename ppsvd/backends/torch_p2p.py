"""torch.distributed point-to-point transports: gloo (CPU tensors) and nccl (CUDA tensors).

Wire, per message: one fixed-size header block (protocol.HEADER_BYTES uint8, tag 0), then each
tensor of the message in header order (tag 1). The receiver validates the header against its
schema *before* it posts any payload receive: gloo aborts the whole process (SIGABRT) when a
received size does not match the posted buffer, so a bad header must become a ProtocolError,
never a receive of the wrong size.

Each adjacent pair of stages gets its own process group, so the receive thread (group k-1,k)
and the send thread (group k,k+1) of a stage never share a group (a group's operations are not
meant to be issued from two threads at once, and NCCL would serialise them).

Every wait is `isend/irecv` followed by a wait in short slices that check cancellation and the
deadline. A Work's own wait(timeout) cannot be used: it cannot be interrupted, and for gloo an
expired wait(timeout) poisons the whole group. NCCL works are polled with is_completed()
(base.wait_for). Gloo send/recv works never report completion before wait() is called, so a
daemon waiter thread per direction blocks in wait() and sets an event (see _ThreadedWait).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from ppsvd.backends.base import StageWorld, Transport, wait_for
from ppsvd.backends.deadline import CancelCheck, Deadline
from ppsvd.backends.protocol import (
    HEADER_BYTES,
    Header,
    Message,
    Schema,
    check_against_schema,
    empty_like_spec,
    parse_header,
)
from ppsvd.errors import (
    Cancelled,
    ConfigError,
    ProtocolError,
    TransportError,
    TransportTimeout,
)

# Separate tags for header and payload: gloo matches sends to receives by (peer, tag), so a
# header receive can never be matched by a payload send, even if the stream got out of step.
HEADER_TAG = 0
PAYLOAD_TAG = 1

_DESTROY_WAIT_S = 5.0
CANCEL_CHECK_S = 0.05
"""Longest a wait goes without checking cancellation."""


class _TorchP2PTransport(Transport):
    """Shared logic; subclasses say which backend and where tensors live on the wire."""

    backend = "none"

    def __init__(self, world: StageWorld, *, max_payload_bytes: int | None = None) -> None:
        super().__init__(world, max_payload_bytes=max_payload_bytes)
        self._recv_group = None  # group (k-1, k)
        self._send_group = None  # group (k, k+1)
        self._owns_default_group = False
        self._opened = False
        self._closed = False
        # A header receive that timed out stays posted and is resumed by the next recv():
        # posting a second one would leave two receives competing for the next header.
        self._pending_header: tuple[_WaitHandle, torch.Tensor] | None = None
        # Set when a link is out of step (bad header, timeout mid-message, dead peer): the
        # next bytes on it are not a header any more, so every later call must fail.
        self._recv_broken: str | None = None
        self._send_broken: str | None = None

    # -- subclass hooks -------------------------------------------------------------------

    @property
    def wire_device(self) -> torch.device:
        raise NotImplementedError

    def _init_default_group(self) -> None:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Where this stage's links are, in words (for doctor / logs)."""
        return f"torch.distributed {self.backend}, rank {self.world.rank} of {self.world.world_size}"

    def open(self) -> None:
        if self._opened:
            return
        if not dist.is_available():
            raise ConfigError(f"--transport {self.name}: this torch build has no torch.distributed")
        if not dist.is_initialized():
            self._init_default_group()
            self._owns_default_group = True
        elif dist.get_world_size() != self.world.world_size or dist.get_rank() != self.world.rank:
            raise ConfigError(
                f"torch.distributed is already initialised as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but this stage is rank {self.world.rank} of {self.world.world_size}"
            )
        self._create_pair_groups()
        self._opened = True

    def _create_pair_groups(self) -> None:
        # new_group is collective over the whole world: every rank creates every pair, in the same order.
        timeout = timedelta(seconds=self.world.transport.timeout_s)
        rank = self.world.rank
        for src, dst in self.world.all_links:  # one group per directed link: a pair's two directions never share one
            group = dist.new_group(sorted((src, dst)), timeout=timeout, backend=self.backend)
            if dst == rank:
                self._recv_group = group
            if src == rank:
                self._send_group = group

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._opened or not dist.is_initialized():
            return
        if self._pending_header is not None or self._recv_broken or self._send_broken:
            # Operations are still posted on a broken link; tearing the group down could block
            # on them. The process is about to exit anyway, which releases everything.
            return
        groups = [g for g in (self._recv_group, self._send_group) if g is not None]
        if self._owns_default_group:
            groups = [None]  # destroys the default group and every subgroup
        _destroy_bounded(groups)

    # -- send -----------------------------------------------------------------------------

    def send(self, msg: Message, *, timeout_s: float, cancelled: CancelCheck) -> None:
        if self._send_group is None:
            raise TransportError(f"stage {self.world.rank} is the last stage: it has no next stage to send to")
        peer = self.world.next_rank
        if self._send_broken:
            raise TransportError(f"link to stage {peer} is unusable: {self._send_broken}")
        header = msg.header()
        block = _header_tensor(header, self.wire_device)
        payload = [self._to_wire(t) for t in msg.tensors.values()]
        works = [dist.isend(block, dst=peer, group=self._send_group, tag=HEADER_TAG)]
        works += [dist.isend(t, dst=peer, group=self._send_group, tag=PAYLOAD_TAG) for t in payload if t.numel()]
        try:
            self._wait_all(
                works,
                "send",
                timeout_s=timeout_s,
                cancelled=cancelled,
                what=f"send of {msg.kind} {msg.index} to stage {peer}",
            )
        except BaseException as exc:
            # Part of the message may be on the wire: the link cannot carry another message.
            self._send_broken = f"an earlier send failed ({exc})"
            raise

    def _to_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self.wire_device).contiguous()

    # -- recv -----------------------------------------------------------------------------

    def recv(self, schema: Schema | None, *, timeout_s: float, cancelled: CancelCheck) -> Message:
        if self._recv_group is None:
            raise TransportError(
                f"stage {self.world.rank} is the first stage: it has no previous stage to receive from"
            )
        if self._recv_broken:
            raise TransportError(f"link from stage {self.world.prev_rank} is unusable: {self._recv_broken}")
        header = self._recv_header(timeout_s=timeout_s, cancelled=cancelled)
        try:
            try:
                check_against_schema(header, schema, max_payload_bytes=self.max_payload_bytes)
            except ProtocolError as exc:
                raise ProtocolError(f"from stage {self.world.prev_rank}: {exc}") from None
            tensors = self._recv_payload(header, timeout_s=timeout_s, cancelled=cancelled)
        except BaseException as exc:
            # The peer's payload sends (if any) are still coming: the link is out of step,
            # and its next bytes must never be taken for a header.
            self._recv_broken = f"an earlier receive failed ({exc})"
            raise
        return Message(kind=header.kind, index=header.index, tensors=tensors, meta=dict(header.meta))

    def _recv_header(self, *, timeout_s: float, cancelled: CancelCheck) -> Header:
        peer = self.world.prev_rank
        if self._pending_header is None:
            block = torch.empty(HEADER_BYTES, dtype=torch.uint8, device=self.wire_device)
            work = dist.irecv(block, src=peer, group=self._recv_group, tag=HEADER_TAG)
            self._pending_header = (self._start_wait([work], "recv"), block)
        handle, block = self._pending_header
        try:
            self._wait(handle, timeout_s=timeout_s, cancelled=cancelled, what=f"receive of a header from stage {peer}")
        except (TransportTimeout, Cancelled) as exc:
            if handle.failed:  # the backend's own timeout: the group is unusable, nothing to resume
                self._pending_header = None
                self._recv_broken = f"an earlier receive failed ({exc})"
            raise  # otherwise the receive stays posted and the next recv() resumes it
        except BaseException as exc:
            self._pending_header = None
            self._recv_broken = f"an earlier receive failed ({exc})"
            raise
        self._pending_header = None
        raw = block.cpu().numpy().tobytes()
        try:
            return parse_header(raw)
        except ProtocolError as exc:
            self._recv_broken = f"stage {peer} sent a malformed header ({exc})"
            raise ProtocolError(f"from stage {peer}: {exc}") from None

    def _recv_payload(self, header: Header, *, timeout_s: float, cancelled: CancelCheck) -> dict[str, torch.Tensor]:
        peer = self.world.prev_rank
        tensors = {spec.name: empty_like_spec(spec, self.wire_device) for spec in header.tensors}
        works = [
            dist.irecv(t, src=peer, group=self._recv_group, tag=PAYLOAD_TAG) for t in tensors.values() if t.numel()
        ]
        self._wait_all(
            works,
            "recv",
            timeout_s=timeout_s,
            cancelled=cancelled,
            what=f"receive of {header.kind} {header.index} from stage {peer}",
        )
        return tensors

    # -- waiting --------------------------------------------------------------------------

    def _start_wait(self, works: list, direction: str) -> _WaitHandle:
        """Start watching works; the handle says when all are done. direction: 'send' or 'recv'."""
        raise NotImplementedError

    def _wait(self, handle: _WaitHandle, *, timeout_s: float, cancelled: CancelCheck, what: str) -> None:
        """Wait for a handle under one deadline; turn backend errors into TransportError."""
        handle.wait(Deadline(timeout_s, what=what, cancelled=cancelled))
        try:
            handle.finish()
        except RuntimeError as exc:  # DistBackendError is a RuntimeError
            reason = _first_line(exc)
            if "timed out" in reason.lower():
                # The group's own timeout (world.transport.timeout_s) expired in the backend: still a timeout,
                # not evidence that the peer died.
                raise TransportTimeout(f"{what} timed out in {self.backend}: {reason}") from exc
            raise TransportError(f"{what} failed, the peer stage probably died: {reason}") from exc

    def _wait_all(self, works: list, direction: str, *, timeout_s: float, cancelled: CancelCheck, what: str) -> None:
        self._wait(self._start_wait(works, direction), timeout_s=timeout_s, cancelled=cancelled, what=what)


class _WaitHandle:
    def wait(self, deadline: Deadline) -> None:
        """Return when done; raise TransportTimeout / Cancelled otherwise (the handle stays usable)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once wait() returned: raises the backend's error, if any."""

    @property
    def failed(self) -> bool:
        """The backend reported an error (so waiting again is pointless)."""
        return False


class _PolledWait(_WaitHandle):
    """NCCL: is_completed() queries the CUDA events, so it can be polled directly."""

    def __init__(self, works: list) -> None:
        self.works = works

    def wait(self, deadline: Deadline) -> None:
        wait_for(lambda: all(w.is_completed() for w in self.works), deadline)

    def finish(self) -> None:
        for work in self.works:
            # Completed on the GPU; wait() makes the current stream wait on NCCL's stream
            # (so the received tensors are safe to use) or raises the communicator's error.
            work.wait()


class _ThreadedWait(_WaitHandle):
    """Gloo: a send/recv Work only completes inside wait(), and a wait(timeout) that expires
    poisons the whole gloo context. So a waiter thread blocks in wait() (bounded by the group
    timeout) and sets an event, which this thread waits on in slices: it wakes the moment the
    work completes (no polling delay) and still checks cancellation. A timed-out handle can be
    resumed."""

    def __init__(self, works: list) -> None:
        self.works = works
        self.event = threading.Event()
        self.error: BaseException | None = None

    def wait(self, deadline: Deadline) -> None:
        while not self.event.is_set():
            self.event.wait(deadline.slice(CANCEL_CHECK_S))

    def finish(self) -> None:
        if self.error is not None:
            raise self.error

    @property
    def failed(self) -> bool:
        return self.error is not None


class _Waiter:
    """One daemon thread per link direction that blocks in Work.wait() for queued handles.

    Daemon, so a wait stuck on a dead or silent peer never keeps the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_ThreadedWait | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, works: list) -> _ThreadedWait:
        handle = _ThreadedWait(works)
        self._jobs.put(handle)
        return handle

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (handle := self._jobs.get()) is not None:
            try:
                for work in handle.works:
                    work.wait()
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that polls the handle
                handle.error = exc
            finally:
                handle.event.set()


class GlooTransport(_TorchP2PTransport):
    """torch.distributed gloo: CPU tensors; device tensors are staged through host memory."""

    name = "gloo"
    backend = "gloo"

    @property
    def wire_device(self) -> torch.device:
        return torch.device("cpu")

    def __init__(self, world: StageWorld, *, max_payload_bytes: int | None = None) -> None:
        super().__init__(world, max_payload_bytes=max_payload_bytes)
        self._waiters: dict[str, _Waiter] = {}

    def _init_default_group(self) -> None:
        w = self.world
        dist.init_process_group(
            "gloo",
            store=_group_store(w),
            rank=w.rank,
            world_size=w.world_size,
            timeout=timedelta(seconds=w.transport.timeout_s),
        )

    def _start_wait(self, works: list, direction: str) -> _WaitHandle:
        if direction not in self._waiters:
            self._waiters[direction] = _Waiter(f"ppsvd-gloo-{direction}-wait")
        return self._waiters[direction].submit(works)

    def close(self) -> None:
        super().close()
        for waiter in self._waiters.values():
            waiter.stop()  # a waiter stuck on a dead link is a daemon and dies with the process
        self._waiters.clear()


class NcclTransport(_TorchP2PTransport):
    """torch.distributed nccl: CUDA tensors go GPU to GPU (header block included)."""

    name = "nccl"
    backend = "nccl"

    @property
    def wire_device(self) -> torch.device:
        return torch.device(self.world.device)

    def open(self) -> None:
        device = torch.device(self.world.device)
        if device.type != "cuda" or device.index is None:
            raise ConfigError(
                f"--transport nccl needs a CUDA device per stage like 'cuda:0', got {self.world.device!r}"
            )
        # The device must be set before NCCL creates a communicator, or every rank lands on GPU 0.
        torch.cuda.set_device(device)
        super().open()

    def _init_default_group(self) -> None:
        w = self.world
        dist.init_process_group(
            "nccl",
            store=_group_store(w),
            rank=w.rank,
            world_size=w.world_size,
            timeout=timedelta(seconds=w.transport.timeout_s),
            device_id=torch.device(w.device),
        )

    def _start_wait(self, works: list, direction: str) -> _WaitHandle:
        return _PolledWait(works)


def _group_store(w: StageWorld):
    """The process group's keys under the run id: a torchrun restart reuses the agent's store, and
    the new ranks must not read the addresses the dead ones published there."""
    return dist.PrefixStore(f"ppsvd/{w.run_id}/pg", w.store)


def _header_tensor(header: Header, device: torch.device) -> torch.Tensor:
    block = torch.frombuffer(bytearray(header.to_block()), dtype=torch.uint8)
    return block.to(device) if device.type != "cpu" else block


def _first_line(exc: BaseException) -> str:
    """The backend's message, one line, without gloo's generic advice."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(" This is typically caused by")[0]


def _destroy_bounded(groups: list) -> None:
    """destroy_process_group in a daemon thread, given up on after a few seconds (it must never hang close())."""

    def destroy() -> None:
        for group in groups:
            with contextlib.suppress(Exception):  # teardown is best effort
                dist.destroy_process_group(group)

    thread = threading.Thread(target=destroy, name="ppsvd-destroy-pg", daemon=True)
    thread.start()
    thread.join(_DESTROY_WAIT_S)
