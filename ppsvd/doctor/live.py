"""The live transport check: latent-sized messages between 2 local workers, per transport.

Uses ppsvd.backends.linkcheck.check_link (which bounds itself by its timeout and kills its workers). Doctor
adds a second guard: each check runs in a daemon thread that doctor stops waiting for after the
timeout plus a grace period, so doctor never hangs even if a check does not return.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from ppsvd.config import RunConfig
from ppsvd.doctor.facts import Facts, LinkInfo
from ppsvd.shapes import LatentShape

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GRACE_S = 5.0
"""Extra seconds doctor waits for check_link beyond its own timeout before giving up on it."""
REPEATS = 20


def candidates(facts: Facts) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(label, transport, zmq_endpoint) to try here, and (label, why) for those that cannot be."""
    run: list[tuple[str, str, str]] = [("gloo", "gloo", "auto")]
    skipped: list[tuple[str, str]] = []
    if facts.packages.get("pyzmq"):
        run += [("zmq-ipc", "zmq", "ipc"), ("zmq-tcp", "zmq", "tcp")]
    else:
        skipped += [("zmq-ipc", "pyzmq not installed"), ("zmq-tcp", "pyzmq not installed")]
    if len(facts.gpus) >= 2 and facts.cuda_usable and facts.nccl:
        run.append(("nccl", "nccl", "auto"))
    elif len(facts.gpus) < 2:
        skipped.append(("nccl", f"needs 2 GPUs, {len(facts.gpus)} visible"))
    else:
        skipped.append(("nccl", "torch cannot use the GPUs or has no NCCL"))
    return run, skipped


def run_live(
    facts: Facts,
    config: RunConfig,
    dtype: str,
    *,
    timeout_s: float = 10.0,
    check_link: Callable[..., Any] | None = None,
    hang: tuple[str, ...] = (),
    on_start: Callable[[str], None] | None = None,
) -> None:
    """Fill facts.live (and live_skipped / live_error). `hang`: labels to force to hang (tests)."""
    if facts.torch_error:
        facts.live_error = "torch is not importable"
        return
    if check_link is None:
        try:
            from ppsvd.backends.linkcheck import check_link  # noqa: PLC0415 - imports torch.distributed lazily itself
        except Exception as exc:  # noqa: BLE001
            facts.live_error = f"ppsvd.backends.linkcheck is not importable ({type(exc).__name__}: {exc})"
            return
    payload = LatentShape(*config.job.latent_shape).handoff()
    run, skipped = candidates(facts)
    facts.live_skipped = skipped
    facts.live = []
    for label, transport, endpoint in run:
        if on_start:
            on_start(label)
        facts.live.append(
            _one(check_link, label, transport, endpoint, payload, TORCH_DTYPES[dtype], timeout_s, label in hang)
        )
    # The first check also pays for starting check_link's worker server (a torch import: seconds on a
    # busy machine), inside its timeout. If it timed out while a later one worked, run it once more.
    first = facts.live[0] if facts.live else None
    if first is not None and not first.ok and "timed out" in (first.error or "") and any(x.ok for x in facts.live):
        label, transport, endpoint = run[0]
        if on_start:
            on_start(f"{label} (again: the first check also started the workers' server)")
        again = _one(check_link, label, transport, endpoint, payload, TORCH_DTYPES[dtype], timeout_s, label in hang)
        facts.live[0] = dataclasses.replace(again, attempts=2)


def _one(
    check_link: Callable[..., Any],
    label: str,
    transport: str,
    endpoint: str,
    payload: tuple[int, ...],
    dtype: str,
    timeout_s: float,
    hang: bool,
) -> LinkInfo:
    box: dict[str, Any] = {}
    start = time.monotonic()

    def target() -> None:
        try:
            box["result"] = check_link(
                transport,
                zmq_endpoint=endpoint,
                payload_shape=payload,
                dtype=dtype,
                repeats=REPEATS,
                timeout_s=timeout_s,
                _hang=hang,
            )
        except BaseException as exc:  # noqa: BLE001 - reported, never raised
            box["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

    thread = threading.Thread(target=target, name=f"ppsvd-doctor-{label}", daemon=True)
    thread.start()
    thread.join(timeout_s + GRACE_S)
    elapsed = time.monotonic() - start
    if thread.is_alive():
        return LinkInfo(
            transport=transport,
            endpoint=None,
            label=label,
            ok=False,
            elapsed_s=elapsed,
            timeout_s=timeout_s,
            error=f"no answer within {timeout_s + GRACE_S:g}s (abandoned)",
        )
    if "error" in box:
        return LinkInfo(
            transport=transport,
            endpoint=None,
            label=label,
            ok=False,
            error=box["error"],
            elapsed_s=elapsed,
            timeout_s=timeout_s,
        )
    r = box["result"]
    return LinkInfo(
        transport=transport,
        endpoint=getattr(r, "endpoint", None) or None,
        label=label,
        ok=bool(r.ok),
        latency_ms=r.latency_ms,
        bandwidth_gbps=r.bandwidth_gbps,
        error=r.error,
        elapsed_s=getattr(r, "elapsed_s", elapsed),
        timeout_s=timeout_s,
    )
