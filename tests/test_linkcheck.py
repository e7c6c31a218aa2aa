"""ppsvd.backends.linkcheck: a live transport check between 2 local workers, always bounded in time.

The first check of the session starts the forkserver (one torch import), so the successful
checks get a generous timeout: they return as soon as they are done.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from ppsvd.backends.linkcheck import LinkResult, check_link
from ppsvd.errors import ConfigError


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("transport", "endpoint", "scheme"),
    [("gloo", "auto", "gloo between 2 local processes"), ("zmq", "ipc", "ipc://"), ("zmq", "tcp", "tcp://127.0.0.1:")],
)
def test_check_link_measures_a_working_transport(transport, endpoint, scheme):
    result = check_link(transport, zmq_endpoint=endpoint, repeats=5, timeout_s=60)
    assert isinstance(result, LinkResult)
    assert result.ok, result.error
    assert result.error is None
    assert result.transport == transport
    assert result.endpoint.startswith(scheme)
    assert 0 < result.latency_ms < 1000
    assert result.bandwidth_gbps > 0
    assert 0 < result.elapsed_s < 60


@pytest.mark.timeout(60)
def test_check_link_small_payload_in_bf16():
    result = check_link("zmq", zmq_endpoint="ipc", payload_shape=(3, 5), dtype="bfloat16", repeats=3, timeout_s=60)
    assert result.ok, result.error


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["gloo", "zmq"])
def test_a_hanging_link_is_reported_failed_within_its_timeout(transport):
    start = time.monotonic()
    result = check_link(transport, zmq_endpoint="ipc", repeats=2, timeout_s=3.0, _hang=True)
    took = time.monotonic() - start
    assert not result.ok
    assert result.error.startswith("timed out after 3s"), result.error
    assert result.latency_ms is None and result.bandwidth_gbps is None
    assert took < 3.0 + 2.0
    assert 3.0 <= result.elapsed_s < 3.0 + 2.0
    if transport == "zmq":  # the killed worker's ipc socket file is cleaned up
        assert result.endpoint.startswith("ipc://")
        assert not os.path.exists(result.endpoint[len("ipc://") :])


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this host can run the nccl check")
def test_nccl_without_two_gpus_fails_fast_with_a_reason():
    start = time.monotonic()
    result = check_link("nccl")
    assert not result.ok
    assert "CUDA" in result.error
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transport": "carrier-pigeon"}, "carrier-pigeon"),
        ({"transport": "zmq", "zmq_endpoint": "udp"}, "udp"),
        ({"transport": "gloo", "dtype": "float8"}, "float8"),
        ({"transport": "gloo", "repeats": 0}, "repeats 0"),
        ({"transport": "gloo", "payload_shape": (1, 0)}, r"\(1, 0\)"),
        ({"transport": "gloo", "timeout_s": 0}, "timeout"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_link(**kwargs)
