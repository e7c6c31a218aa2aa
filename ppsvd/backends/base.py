"""The Transport contract: one stage's two links, to the previous and to the next stage.

A stage receives from stage k-1 on one thread and sends to stage k+1 on another, so an
implementation must allow recv and send to run concurrently (separate sockets or process
groups per direction). Every wait is bounded: implementations wait in short slices and call
`cancelled()` between them, so a stage stops promptly when the run is aborted elsewhere.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ppsvd.backends.deadline import CancelCheck, Deadline
from ppsvd.backends.protocol import Message, Schema
from ppsvd.config import TransportSection


@dataclass(frozen=True)
class StageWorld:
    """Where this process sits in the pipeline and how to reach the others."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    store: Any
    """A torch.distributed Store shared by all stages (endpoint exchange, abort flag, progress)."""
    device: str = "cpu"
    """'cpu' or 'cuda:<i>': where this stage's tensors live."""
    transport: TransportSection = field(default_factory=TransportSection)
    """The run's transport section: timeout_s, and zmq's bind_host and zmq_endpoint."""
    run_id: str = "ppsvd"
    links: tuple[tuple[int, int], ...] | None = None
    """Every (sender, receiver) link of this transport in the whole world, the same list on every
    rank (torch.distributed creates each link's group collectively); None: the chain 0 -> 1 ->
    ... -> N-1. A rank has at most one link in and one out (a guidance pair: both to its partner)."""

    @property
    def all_links(self) -> tuple[tuple[int, int], ...]:
        if self.links is not None:
            return self.links
        return tuple((k, k + 1) for k in range(self.world_size - 1))

    @property
    def prev_rank(self) -> int | None:
        """The rank this one receives from; None if it receives from nobody."""
        if self.links is None:
            return self.rank - 1 if self.rank > 0 else None
        return next((src for src, dst in self.links if dst == self.rank), None)

    @property
    def next_rank(self) -> int | None:
        """The rank this one sends to; None if it sends to nobody."""
        if self.links is None:
            return self.rank + 1 if self.rank < self.world_size - 1 else None
        return next((dst for src, dst in self.links if src == self.rank), None)

    @property
    def is_first(self) -> bool:
        return self.prev_rank is None

    @property
    def is_last(self) -> bool:
        return self.next_rank is None


class Transport(ABC):
    """Links of one stage. Construct with the world; `open()` connects (collective: all stages call it)."""

    name: str = "base"

    def __init__(self, world: StageWorld, *, max_payload_bytes: int | None = None) -> None:
        self.world = world
        self.max_payload_bytes = max_payload_bytes

    @abstractmethod
    def open(self) -> None:
        """Connect to the neighbours. Called once by every stage before any send or recv."""

    @abstractmethod
    def send(self, msg: Message, *, timeout_s: float, cancelled: CancelCheck) -> None:
        """Hand msg to the next stage; returns when the buffers may be reused."""

    @abstractmethod
    def recv(self, schema: Schema | None, *, timeout_s: float, cancelled: CancelCheck) -> Message:
        """Receive the next message from the previous stage, validated against schema."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets / groups. Must not block for long, and may be called twice."""


def wait_for(
    done: Callable[[], bool],
    deadline: Deadline,
    *,
    poll_s: float = 0.0002,
    max_poll_s: float = 0.005,
) -> None:
    """Poll `done()` until it is true, with a growing sleep; raise on timeout or cancellation.

    For handles that can only be polled (NCCL work: is_completed() queries CUDA events); anything
    with an event or a socket should block on that instead. The sleep starts at 0.2 ms.
    """
    sleep = poll_s
    while not done():
        time.sleep(deadline.slice(sleep))
        sleep = min(sleep * 1.5, max_poll_s)
