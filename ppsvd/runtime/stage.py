"""The stage loop: receive -> run own steps -> send on, with fill, drain and end of stream.

Three threads per stage keep the compute loop busy:
- a receiver thread fetches the next sample from the previous stage while this one computes
  (a bounded inbox: it stops receiving when full, which holds the previous stage back);
- the compute loop (the caller's thread) runs this stage's steps on one sample at a time;
- a sender thread hands finished samples to the next stage, so a slow send never stalls the
  next computation (a bounded outbox: when it is full the compute loop waits: back-pressure).
The last stage has a writer thread instead of a sender, so encoding and disk I/O overlap too.
Samples travel in order on FIFO links; every stage checks the index it receives, so a lost,
repeated or reordered sample is an error, never a silently different output.

A service (ppsvd serve) streams samples instead of a fixed list: stage 0 of each replica gets
them from a SampleSource (the next job, prepared; None once the service drains), later stages
accept any increasing index until the end of stream, and a sample whose job was cancelled
leaves at a stage boundary (`drop`): it is neither computed nor sent on, and the end of stream
carries the count actually sent, so the next stage's check still holds.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ppsvd.analysis.timeline import SampleSpan, StageTimeline
from ppsvd.backends.base import Transport
from ppsvd.backends.deadline import CancelCheck, Deadline
from ppsvd.backends.protocol import Message
from ppsvd.config import RunConfig
from ppsvd.errors import Cancelled, TransportError, TransportTimeout
from ppsvd.models.base import Sample, SampleResult, StageModel, synchronize
from ppsvd.planning.steps import StepPlan
from ppsvd.runtime.control import StepWatch
from ppsvd.runtime.progress import ProgressReporter

POLL_S = 0.05


class HopSignals(Protocol):
    """A service's announced hand-offs (runtime/jobfeed.Hops): the sender says a message comes,
    the receiver waits for that (without a deadline, checking the stop flag) before it receives."""

    def announce(self, sender: int, n: int) -> None: ...

    def wait(self, sender: int, n: int, cancelled: CancelCheck) -> None: ...


class SampleSource(Protocol):
    """Where stage 0 of a service gets its samples (runtime/jobfeed.JobFeed)."""

    def next(self, model: StageModel) -> tuple[Sample, float, float] | None:
        """The next sample, prepared by `model`, when its preparing began (time.time(), after the
        wait for it) and how many seconds it took; None at the end of the stream. Samples whose
        job fails on its own (an unreadable image) are reported and skipped by the source, not raised."""
        ...


@dataclass
class StageContext:
    """What the loop needs besides the model and the links."""

    config: RunConfig
    plan: StepPlan
    stage: int
    """Position in the chain (the rank for 'pipeline'; 0 for every 'data' worker)."""
    indices: list[int] | None
    """Sample indices this stage will see, in order; with `take`, the ones its replica may take;
    None: an open stream (a service), any increasing index until the end of stream."""
    cancelled: CancelCheck
    fail: Callable[..., None]
    """fail(message, stage=None): publish a failure (of this stage, or of the `stage` blamed)."""
    reporter: ProgressReporter | None = None
    watch: StepWatch | None = None
    """The watchdog's view of the compute loop (control.StepWatch): told when steps begin and end."""
    run_dir: Path | None = None
    take: Callable[[], int | None] | None = None
    """Work queue (several replicas): stage 0 asks it for its next sample (None: none left); later
    stages take what their stage 0 sends, in increasing order, until the end of stream."""
    source: SampleSource | None = None
    """A service's stage 0: the stream of jobs (instead of `indices` or `take`)."""
    drop: Callable[[Sample], bool] | None = None
    """A service: True for a sample whose job was cancelled; it leaves the pipeline at this stage."""
    keep_spans: int | None = None
    """Keep only the latest this many spans (a service runs for ever); None: all (a run's timeline)."""
    hops: HopSignals | None = None
    """A service: every hand-off is announced before it is sent, so a stage can wait idle for
    the next sample as long as the service is idle, and still bound each transfer by --timeout."""
    spans: list[SampleSpan] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.keep_spans is not None:
            self.spans = deque(self.spans, maxlen=self.keep_spans)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.plan.num_stages - 1

    @property
    def idle_timeout_s(self) -> float:
        """How long a stage may wait for its next sample: --timeout in a run; a service may be idle for ever."""
        return math.inf if self.indices is None else self.config.transport.timeout_s

    @property
    def open_order(self) -> bool:
        """Samples come from a queue or a stream: increasing indices, their number known only at the end."""
        return self.take is not None or self.indices is None


def _put(q: queue.Queue, item: Any, cancelled: CancelCheck, timeout_s: float, what: str) -> None:
    deadline = Deadline(timeout_s, what=what, cancelled=cancelled)
    while True:
        try:
            return q.put(item, timeout=deadline.slice(POLL_S))
        except queue.Full:
            continue


def _get(q: queue.Queue, cancelled: CancelCheck, timeout_s: float, what: str) -> Any:
    deadline = Deadline(timeout_s, what=what, cancelled=cancelled)
    while True:
        try:
            return q.get(timeout=deadline.slice(POLL_S))
        except queue.Empty:
            continue


class _PeerSilent(Exception):
    """A transport wait on the neighbour ran out of time: the neighbour is the one to name."""


class _Worker(threading.Thread):
    """A daemon thread whose failure becomes this stage's failure (never swallowed)."""

    peer: int | None = None
    """The neighbour this thread talks to: a broken link is blamed on it, not on us."""

    def __init__(self, ctx: StageContext, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.ctx = ctx

    def run(self) -> None:
        try:
            self.work()
        except Cancelled:
            pass  # another part of the run failed; its reason is already published
        except _PeerSilent as exc:
            self.ctx.fail(str(exc), stage=self.peer)
        except TransportError as exc:
            if self.peer is not None and not isinstance(exc, TransportTimeout):
                # A dead peer shows up here first (gloo sees the socket close at once); the
                # cause is the peer, so name it rather than this healthy stage.
                self.ctx.fail(f"its link to stage {self.ctx.stage} broke: {exc}", stage=self.peer)
            else:
                self.ctx.fail(f"{self.name}: {exc}")
        except Exception as exc:
            self.ctx.fail(f"{self.name}: {type(exc).__name__}: {exc}")

    def work(self) -> None:
        raise NotImplementedError


class Receiver(_Worker):
    """Receives messages ahead of the compute loop into a bounded inbox."""

    def __init__(self, ctx: StageContext, transport: Transport, schema, depth: int) -> None:
        super().__init__(ctx, f"stage {ctx.stage} receiver")
        self.peer = ctx.stage - 1
        self.transport = transport
        self.schema = schema
        self.inbox: queue.Queue = queue.Queue(maxsize=depth)

    def work(self) -> None:
        timeout = self.ctx.config.transport.timeout_s
        hops, count = self.ctx.hops, 0
        while True:
            count += 1
            if hops is not None:  # a service: wait (idle) until the previous stage says a message comes
                hops.wait(self.transport.world.prev_rank, count, self.ctx.cancelled)
            try:
                msg = self.transport.recv(self.schema, timeout_s=timeout, cancelled=self.ctx.cancelled)
            except TransportTimeout as exc:
                # The sender is the one that went quiet (hung, stopped, or unreachable), not us.
                raise _PeerSilent(f"sent nothing to stage {self.ctx.stage} for {timeout:g} s ({exc})") from None
            _put(self.inbox, (msg, time.time()), self.ctx.cancelled, timeout, "the hand-off of a received sample")
            if msg.is_end:
                return


class Sender(_Worker):
    """Sends queued messages to the next stage; records when each send completed."""

    def __init__(self, ctx: StageContext, transport: Transport, depth: int) -> None:
        super().__init__(ctx, f"stage {ctx.stage} sender")
        self.peer = ctx.stage + 1
        self.transport = transport
        self.outbox: queue.Queue = queue.Queue(maxsize=depth)
        self.sent_at: dict[int, float] = {}

    def work(self) -> None:
        timeout = self.ctx.config.transport.timeout_s
        hops, count = self.ctx.hops, 0
        while True:
            msg: Message = _get(self.outbox, self.ctx.cancelled, self.ctx.idle_timeout_s, "sample to send")
            count += 1
            if hops is not None:
                hops.announce(self.transport.world.rank, count)
            try:
                self.transport.send(msg, timeout_s=timeout, cancelled=self.ctx.cancelled)
            except TransportTimeout as exc:
                raise _PeerSilent(f"took nothing from stage {self.ctx.stage} for {timeout:g} s ({exc})") from None
            if msg.is_end:
                return
            self.sent_at[msg.index] = time.time()
            if self.ctx.keep_spans is not None and len(self.sent_at) > self.ctx.keep_spans:
                del self.sent_at[next(iter(self.sent_at))]  # the oldest: its span is gone too


class Writer(_Worker):
    """Last stage: writes each finished sample's outputs while the next one computes."""

    def __init__(self, ctx: StageContext, write: Callable[[SampleResult], None], depth: int) -> None:
        super().__init__(ctx, f"stage {ctx.stage} writer")
        self.write = write
        self.queue: queue.Queue = queue.Queue(maxsize=depth)

    def work(self) -> None:
        while True:
            result = _get(self.queue, self.ctx.cancelled, self.ctx.idle_timeout_s, "sample to write")
            if result is None:
                return
            self.write(result)


@dataclass
class _Threads:
    """The helper threads of one stage: a receiver unless first, a sender unless last, else a writer."""

    receiver: Receiver | None = None
    sender: Sender | None = None
    writer: Writer | None = None

    @property
    def all(self) -> list[_Worker]:
        return [t for t in (self.receiver, self.sender, self.writer) if t is not None]


def run_stage(
    ctx: StageContext,
    model: StageModel,
    transport: Transport | None,
    write: Callable[[SampleResult], None],
) -> list[SampleSpan]:
    """Process every sample of ctx.indices through this stage; returns the per-sample spans."""
    threads = _start_threads(ctx, model, transport, write)
    taken = _Taken(ctx)
    while True:
        arrival = _next_sample(ctx, model, threads.receiver, taken)
        if arrival is None:
            break
        if ctx.drop is not None and ctx.drop(arrival.sample):
            taken.dropped += 1  # its job was cancelled: not computed, not sent on
            continue
        ctx.spans.append(_process(ctx, model, threads, arrival))
        if ctx.reporter is not None:
            ctx.reporter.sample_done()
        if ctx.cancelled():
            raise Cancelled("the run is stopping")
    _end_stream(ctx, threads, taken)
    return ctx.spans


def _start_threads(
    ctx: StageContext, model: StageModel, transport: Transport | None, write: Callable[[SampleResult], None]
) -> _Threads:
    depth = max(1, ctx.config.layout.max_in_flight - 1)  # one message in the transport plus `depth` queued
    threads = _Threads()
    if not ctx.is_first:
        assert transport is not None
        threads.receiver = Receiver(ctx, transport, model.schema(), depth=ctx.config.layout.max_in_flight)
    if not ctx.is_last:
        assert transport is not None
        threads.sender = Sender(ctx, transport, depth=depth)
    else:
        threads.writer = Writer(ctx, write, depth=ctx.config.layout.max_in_flight)
    for thread in threads.all:
        thread.start()
    return threads


@dataclass
class _Arrival:
    """One sample as it enters this stage's compute: prepared here (stage 0) or received."""

    index: int
    sample: Sample
    compute_start: float
    recv: tuple[float | None, float | None, float | None] = (None, None, None)
    """When the wait for it started and ended, and when the receiver had it (later stages)."""
    prepare_s: float | None = None


def _next_sample(ctx: StageContext, model: StageModel, receiver: Receiver | None, taken: _Taken) -> _Arrival | None:
    """The next sample to compute, or None when this stage has seen them all."""
    if ctx.is_first and ctx.source is not None:
        got = ctx.source.next(model)
        if got is None:
            return None
        sample, compute_start, prepare_s = got  # the wait for a job is idle time, not compute
        taken.count += 1
        return _Arrival(sample.index, sample, compute_start, prepare_s=prepare_s)
    if ctx.is_first:
        index = taken.next_for_first()
        if index is None:
            return None
        compute_start = time.time()
        prepare_start = time.perf_counter()
        sample = model.prepare(index)
        synchronize(model.device)  # on CUDA, so prepare_s (and --costs-from) covers the encode itself
        return _Arrival(index, sample, compute_start, prepare_s=time.perf_counter() - prepare_start)
    if taken.exhausted():
        return None
    recv_start = time.time()
    what = f"{taken.waiting_for()} from stage {ctx.stage - 1}"
    msg, arrived = _get(receiver.inbox, ctx.cancelled, ctx.idle_timeout_s, what)
    if msg.is_end and ctx.open_order:
        taken.end = msg
        return None
    index = taken.check_received(msg)
    recv = (recv_start, time.time(), arrived)
    compute_start = time.time()
    return _Arrival(index, Sample.from_message(msg, model.device), compute_start, recv=recv)


def _process(ctx: StageContext, model: StageModel, threads: _Threads, arrival: _Arrival) -> SampleSpan:
    """Run this stage's steps on one sample, then hand it to the writer (last stage) or the sender."""
    my_steps = ctx.plan.ranges[ctx.stage]
    timeout_s = ctx.config.transport.timeout_s
    if ctx.reporter is not None:
        ctx.reporter.begin(arrival.index, arrival.sample.meta.get("job"), arrival.prepare_s or 0.0)
    steps_start = time.perf_counter()
    sample = _run_steps(ctx, model, arrival.sample, my_steps)
    synchronize(model.device)  # the steps' time, not their launch: the finalize or hand-off needs them anyway
    span = SampleSpan(
        index=arrival.index,
        compute_start=arrival.compute_start,
        compute_end=0.0,
        recv_start=arrival.recv[0],
        recv_end=arrival.recv[1],
        arrived=arrival.recv[2],
        steps=len(my_steps),
        steps_s=time.perf_counter() - steps_start,
        prepare_s=arrival.prepare_s,
    )
    if ctx.is_last:
        finalize_start = time.perf_counter()
        result = model.finalize(sample)
        span.finalize_s = time.perf_counter() - finalize_start
        span.compute_end = time.time()
        if ctx.reporter is not None:
            ctx.reporter.computed()
        result.meta.setdefault("started", sample.meta.get("started", arrival.compute_start))
        result.meta["completed"] = span.compute_end
        _put(
            threads.writer.queue,
            result,
            ctx.cancelled,
            timeout_s,
            f"the hand-off of sample {arrival.index} to the writer",
        )
    else:
        span.compute_end = time.time()
        if ctx.reporter is not None:
            ctx.reporter.computed()
        sample.meta.setdefault("started", arrival.compute_start)
        span.send_start = time.time()
        _put(
            threads.sender.outbox,
            sample.to_message(),
            ctx.cancelled,
            timeout_s,
            f"the hand-off of sample {arrival.index} to the sender",
        )
        span.enqueued = time.time()
    return span


def _end_stream(ctx: StageContext, threads: _Threads, taken: _Taken) -> None:
    """End of stream: check the previous stage's count, tell the next stage ours, drain the threads."""
    cancelled, timeout_s = ctx.cancelled, ctx.config.transport.timeout_s
    if threads.receiver is not None:
        msg = taken.end
        if msg is None:
            msg, _ = _get(threads.receiver.inbox, cancelled, timeout_s, f"end of stream from stage {ctx.stage - 1}")
        if not msg.is_end or msg.index != taken.count:
            raise TransportError(
                f"stage {ctx.stage} expected end of stream after {taken.count} samples, got {msg.kind} {msg.index}"
            )
    if threads.sender is not None:
        _put(
            threads.sender.outbox,
            Message.end(taken.count - taken.dropped),  # what the next stage received from us
            cancelled,
            timeout_s,
            "the hand-off of the end of stream to the sender",
        )
    if threads.writer is not None:
        _put(threads.writer.queue, None, cancelled, timeout_s, "the hand-off of the end of stream to the writer")
    for thread in threads.all:
        _join(thread, cancelled, timeout_s)
    if cancelled():
        raise Cancelled("the run is stopping")
    if threads.sender is not None:
        for span in ctx.spans:
            span.send_end = threads.sender.sent_at.get(span.index)


class _Taken:
    """Which sample comes next, and the checks on what arrives: a fixed list (one replica sees
    every sample in order), or a work queue or stream (stage 0 takes; later stages accept
    increasing indices, of the queue's samples if it has a list, each once, until the end of stream)."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.count = 0
        """Samples this stage took or received."""
        self.dropped = 0
        """Of those, the ones that left here (cancelled jobs): not sent on."""
        self.last: int | None = None
        self.allowed = None if ctx.indices is None else set(ctx.indices)
        self.end: Message | None = None

    def next_for_first(self) -> int | None:
        if self.ctx.take is not None:
            index = self.ctx.take()
        else:
            index = self.ctx.indices[self.count] if self.count < len(self.ctx.indices) else None
        if index is not None:
            self.count += 1
        return index

    def exhausted(self) -> bool:
        return not self.ctx.open_order and self.count >= len(self.ctx.indices)

    def waiting_for(self) -> str:
        return "the next sample" if self.ctx.open_order else f"sample {self.ctx.indices[self.count]}"

    def check_received(self, msg: Message) -> int:
        stage = self.ctx.stage
        if not self.ctx.open_order:
            expected = self.ctx.indices[self.count]
            if msg.is_end or msg.index != expected:
                got = "end of stream" if msg.is_end else f"sample {msg.index}"
                raise TransportError(f"stage {stage} received {got} from stage {stage - 1}, expected sample {expected}")
        elif (self.allowed is not None and msg.index not in self.allowed) or (
            self.last is not None and msg.index <= self.last
        ):
            after = f" after sample {self.last}" if self.last is not None else ""
            raise TransportError(
                f"stage {stage} received sample {msg.index} from stage {stage - 1}{after}: not a queued sample it "
                "could take next"
            )
        self.count += 1
        self.last = msg.index
        return msg.index


def _run_steps(ctx: StageContext, model: StageModel, sample: Sample, steps: range) -> Sample:
    """model.run_steps, with every finished step reported to the progress bars and the watchdog."""
    reporter, watch = ctx.reporter, ctx.watch
    if watch is None:
        return model.run_steps(sample, steps, on_step=reporter.step if reporter is not None else None)

    def on_step(step: int) -> None:
        watch.step(step)
        if reporter is not None:
            reporter.step(step)

    watch.begin()
    try:
        return model.run_steps(sample, steps, on_step=on_step)
    finally:
        watch.end()


def _join(thread: threading.Thread, cancelled: CancelCheck, timeout_s: float) -> None:
    deadline = Deadline(timeout_s, what=f"the {thread.name} thread", cancelled=cancelled)
    while thread.is_alive():
        thread.join(deadline.slice(POLL_S))


def stage_timeline(
    ctx: StageContext,
    stage_id: int,
    *,
    launched: float,
    ready: float,
    finished: float,
    host: str,
    device: str,
    compile_s: float | None = None,
) -> StageTimeline:
    steps = ctx.plan.ranges[ctx.stage]
    return StageTimeline(
        stage=stage_id,
        steps=(steps.start, steps.stop),
        launched=launched,
        ready=ready,
        finished=finished,
        samples=list(ctx.spans),
        host=host,
        device=device,
        compile_s=compile_s,
    )
