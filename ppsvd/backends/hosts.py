"""Where each stage runs, as facts its peers can compare, and listeners that stay on this host.

Reachability is decided from facts, never guessed from the world layout: every stage publishes
where it runs through the run's store, and a link is set up from both ends' facts. Two stages
share loopback when they share a kernel (boot id) and a network namespace; they share ipc
socket files when they also share a mount namespace. Two torchrun agents on one machine are
one host by these facts, whatever `--nnodes` says.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    network: str
    """Kernel boot id + network namespace: equal means loopback reaches the other end."""
    files: str
    """network + mount namespace: equal means an ipc socket file is visible to the other end."""
    processes: str
    """Kernel boot id + pid namespace: equal means `pid` can be signalled from here."""
    pid: int
    started: str
    """The process's start time in clock ticks (/proc/<pid>/stat): a recycled pid never matches."""

    def shares_loopback(self, other: HostFacts) -> bool:
        return self.network == other.network

    def shares_files(self, other: HostFacts) -> bool:
        return self.files == other.files

    def shares_processes(self, other: HostFacts) -> bool:
        return self.processes == other.processes

    def alive(self) -> bool:
        """The process these facts describe still runs (not gone, not a zombie); ask only where
        shares_processes(this_host()) holds."""
        stat = _read(f"/proc/{self.pid}/stat")
        if stat is None:
            return False
        fields = stat.rsplit(")", 1)[-1].split()
        return fields[0] != "Z" and fields[19] == self.started

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(raw: bytes | str) -> HostFacts:
        return HostFacts(**json.loads(raw))


def this_host() -> HostFacts:
    boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
    network = f"{boot}/{_namespace('net')}"
    return HostFacts(
        hostname=socket.gethostname(),
        network=network,
        files=f"{network}/{_namespace('mnt')}",
        processes=f"{boot}/{_namespace('pid')}",
        pid=os.getpid(),
        started=_start_ticks(os.getpid()),
    )


def host_key(run_id: str, rank: int) -> str:
    return f"{run_id}/host/{rank}"


def publish_host(store: Any, run_id: str, rank: int) -> HostFacts:
    """Say where this stage runs (idempotent: the transport and the control plane both call it)."""
    facts = this_host()
    store.set(host_key(run_id, rank), facts.to_json())
    return facts


def read_host(store: Any, run_id: str, rank: int, *, timeout_s: float | None = None) -> HostFacts | None:
    """Where stage `rank` runs; None if it has not said (yet, when timeout_s is None)."""
    name = host_key(run_id, rank)
    try:
        if timeout_s is not None:
            store.wait([name], timedelta(seconds=timeout_s))
        elif not store.check([name]):
            return None
        return HostFacts.from_json(store.get(name))
    except Exception:
        return None


def route_address(toward: str) -> str | None:
    """This host's address on the route to `toward` (the store's host): one its peers can reach.

    A UDP connect sends nothing; it only asks the kernel which interface it would use.
    """
    try:
        family = socket.AF_INET6 if ":" in toward else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((toward, 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def loopback_store(timeout_s: float):
    """A TCPStore server that listens on 127.0.0.1 only.

    TCPStore(is_master=True) listens on every interface whatever host name it is given; handed
    an already bound socket (master_listen_fd), it listens where that socket is bound. The
    elastic rendezvous in runtime/launch.py is hosted on such a store too.
    """
    from torch.distributed import TCPStore  # heavy: torch

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        store = TCPStore(
            "127.0.0.1",
            listener.getsockname()[1],
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=timeout_s),
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the server owns the socket from now on
    return store


def _start_ticks(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else "-"


def _namespace(kind: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return "-"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
