"""backends.deadline: every sliced wait ends the same two ways, with the same wording."""

import threading
import time

import pytest
import torch.distributed as dist

from ppsvd.backends.deadline import Deadline
from ppsvd.errors import Cancelled, TransportTimeout
from ppsvd.runtime.control import RunControl


def test_a_slice_never_reaches_past_the_end_and_the_end_raises_a_timeout():
    deadline = Deadline(0.05, what="receive from stage 1")
    assert 0 < deadline.slice(10.0) <= 0.05
    assert deadline.slice(0.001) == 0.001
    time.sleep(0.06)
    assert deadline.remaining() == 0.0
    with pytest.raises(TransportTimeout, match=r"^receive from stage 1 did not complete within 0.05 s$"):
        deadline.slice(0.01)


def test_cancellation_wins_over_time_left_and_a_part_keeps_the_end():
    stop = threading.Event()
    deadline = Deadline(60, what="the send", cancelled=stop.is_set)
    part = deadline.part("the end handshake")
    assert part.end == deadline.end
    stop.set()
    with pytest.raises(Cancelled, match="stopped waiting for the end handshake: the run is stopping"):
        part.check()


def test_control_waits_raise_the_one_timeout_exception():
    # Barrier and completion waits used to raise the builtin TimeoutError, the transports
    # TransportTimeout: a run-level handler now catches one type.
    control = RunControl(dist.HashStore(), "t", rank=0, world_size=2)
    with pytest.raises(TransportTimeout, match="the 'ready' barrier did not complete within 0.05 s"):
        control.barrier("ready", 0.05)
    with pytest.raises(TransportTimeout, match="within 0.05 s"):
        control.wait_all_done(0.05)
    control.fail("boom")
    with pytest.raises(Cancelled):
        control.barrier("again", 60)
