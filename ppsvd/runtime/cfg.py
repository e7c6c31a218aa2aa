"""Guidance-parallel stages: the link between the two ranks of a guidance pair.

SVD runs classifier-free guidance as a batch of two (unconditional, conditional) in every step.
A guidance pair splits that batch: rank 2j computes the unconditional half, rank 2j+1 the
conditional one, and after each UNet call they swap their noise predictions (one latent-sized
tensor each way), so both apply diffusers' per-frame guidance and scheduler step to the same
numbers and keep the same latent. The last stage's pair also splits the VAE decode by
decode_chunk_size chunks and the conditional half sends its frames to the unconditional one,
which writes the video.

The link is an ordinary Transport (gloo, nccl or zmq) whose one link in and one link out both go
to the partner, under its own namespace in the store; every wait is bounded and checks the
run's abort flag like any hand-off.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import replace
from typing import Any

import torch

from ppsvd.backends.base import StageWorld, Transport
from ppsvd.backends.deadline import CancelCheck, Deadline
from ppsvd.backends.protocol import KIND_SAMPLE, Message, TensorSpec, dtype_name
from ppsvd.errors import ProtocolError

POLL_S = 0.05


class PairLink:
    """One rank's link to its guidance partner: exchange() both ways, or send()/recv() one way."""

    def __init__(self, transport: Transport, *, partner: int, timeout_s: float, cancelled: CancelCheck) -> None:
        self.transport = transport
        self.partner = partner
        self.timeout_s = timeout_s
        self.cancelled = cancelled
        # Sends run beside the receive: gloo completes a send only once the partner receives it,
        # so two ranks that both sent first and received second would wait for each other.
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ppsvd-pair-send")

    def exchange(self, name: str, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """Send `tensor`, receive the partner's tensor of the same name, shape and dtype (message `index`)."""
        pending = self._sender.submit(self._send, name, tensor, index)
        received = self.recv(name, tuple(tensor.shape), tensor.dtype, index, device=tensor.device)
        self._finish(pending, f"the send of {name} {index} to rank {self.partner}")
        return received

    def send(self, name: str, tensor: torch.Tensor, index: int) -> None:
        self._send(name, tensor, index)

    def recv(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, index: int, *, device: Any = "cpu"
    ) -> torch.Tensor:
        schema = {name: TensorSpec(name, dtype_name(dtype), tuple(shape))}
        msg = self.transport.recv(schema, timeout_s=self.timeout_s, cancelled=self.cancelled)
        if msg.is_end or msg.index != index:
            got = "end of stream" if msg.is_end else f"{name} {msg.index}"
            raise ProtocolError(
                f"rank {self.transport.world.rank} received {got} from its guidance partner, rank {self.partner}, "
                f"expected {name} {index}"
            )
        return msg.tensors[name].to(device, non_blocking=True)

    def _send(self, name: str, tensor: torch.Tensor, index: int) -> None:
        msg = Message(kind=KIND_SAMPLE, index=index, tensors={name: tensor})
        self.transport.send(msg, timeout_s=self.timeout_s, cancelled=self.cancelled)

    def _finish(self, pending: concurrent.futures.Future, what: str) -> None:
        deadline = Deadline(self.timeout_s, what=what, cancelled=self.cancelled)
        while True:
            try:
                return pending.result(timeout=deadline.slice(POLL_S))
            except concurrent.futures.TimeoutError:
                continue

    def close(self) -> None:
        self._sender.shutdown(wait=False, cancel_futures=True)
        self.transport.close()


def pair_world(world: StageWorld, pair_links: tuple[tuple[int, int], ...]) -> StageWorld:
    """The partner link's StageWorld: both of this rank's links go to its partner, and its store
    keys (zmq endpoints, CURVE keys, ipc sockets) live under their own namespace of the run."""

    return replace(world, links=pair_links, run_id=f"{world.run_id}-pair")


def open_pair_link(
    transport_class: type[Transport],
    world: StageWorld,
    pair_links,
    *,
    max_payload_bytes: int | None,
    cancelled: CancelCheck,
) -> PairLink:
    """Connect this rank to its partner (collective: every rank of the run calls it, after the
    pipeline links are open, so torch.distributed creates its groups in the same order everywhere)."""
    transport = transport_class(pair_world(world, pair_links), max_payload_bytes=max_payload_bytes)
    try:
        transport.open()
    except BaseException:
        transport.close()
        raise
    partner = transport.world.next_rank
    return PairLink(transport, partner=partner, timeout_s=world.transport.timeout_s, cancelled=cancelled)
