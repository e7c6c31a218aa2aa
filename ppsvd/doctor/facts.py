"""What doctor knows: plain dataclasses, filled by probe.py (side effects) and read by checks.py (pure).

Tests build these by hand (a fake 7-GPU machine, a machine without a GPU) and feed them to the
checks; nothing here imports torch, NVML or touches the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "skip")


@dataclass(frozen=True, kw_only=True)
class GpuInfo:
    """One GPU as the run would see it: `index` is the CUDA ordinal (stage k uses cuda:k)."""

    index: int
    name: str
    total_bytes: int | None = None
    free_bytes: int | None = None
    capability: tuple[int, int] | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    nvml_index: int | None = None
    """NVML's (physical) index, which differs from `index` under CUDA_VISIBLE_DEVICES."""
    nvlinks_active: int | None = None
    """Active NVLink links of this GPU (NVML); None when unknown."""


@dataclass(frozen=True, kw_only=True)
class PairInfo:
    """Two GPUs (CUDA ordinals a < b) and how data moves between them."""

    a: int
    b: int
    p2p: bool | None
    """Direct peer-to-peer access both ways; None when it could not be determined."""
    p2p_reason: str | None = None
    """Why there is no P2P, as NVML says (e.g. 'topology not supported'); None when P2P is fine or unknown."""
    nvlink: bool | None = None
    """Connected by NVLink (directly or through NVSwitch); None when unknown (torch fallback)."""
    topology: str | None = None
    """NVML's common ancestor: internal, single, multiple, hostbridge, node (same CPU), system (across CPUs)."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Where the weights of the planned model are, and whether they are complete."""

    model: str
    kind: Literal["embedded", "hub", "local"]
    present: bool
    """Every component a run needs is there (always True for embedded models)."""
    path: str | None = None
    """The local directory or the cache snapshot read; None when nothing was found."""
    files: int = 0
    size_bytes: int = 0
    missing: tuple[str, ...] = ()
    """Components (unet, vae, image_encoder, feature_extractor, scheduler) without their config or weights."""
    incomplete_downloads: int = 0
    """Partial files (*.incomplete) in the cache: an interrupted download."""
    cache_dir: str | None = None
    vae_scale_factor: int | None = None
    """Pixels per latent cell, from the model's VAE config (ppsvd.models.pixels); None: not on disk yet."""


@dataclass(frozen=True, kw_only=True)
class DiskInfo:
    path: str
    """The directory asked about (output dir or HF cache)."""
    existing: str
    """Its nearest existing ancestor, where free space was measured."""
    free_bytes: int | None
    total_bytes: int | None = None
    writable: bool = True


@dataclass(frozen=True, kw_only=True)
class LinkInfo:
    """One live transport measurement between 2 local workers (from ppsvd.backends.linkcheck.check_link)."""

    transport: str
    """gloo, nccl, zmq."""
    endpoint: str | None
    """zmq: ipc or tcp address; others: None or what check_link reports."""
    label: str
    """How doctor names it: gloo, zmq-ipc, zmq-tcp, nccl."""
    ok: bool
    latency_ms: float | None = None
    bandwidth_gbps: float | None = None
    error: str | None = None
    elapsed_s: float | None = None
    timeout_s: float | None = None
    attempts: int = 1
    """2 when the first check timed out and was run again (see live.run_live)."""


@dataclass(kw_only=True)
class Facts:
    """Everything probed about this machine. Every field has a harmless default, so tests set few."""

    python: str = ""
    platform: str = ""
    packages: dict[str, str | None] = field(default_factory=dict)
    """Installed versions: torch, diffusers, transformers, pyzmq, nvidia-ml-py, huggingface_hub (None: absent)."""
    torch_error: str | None = None
    """Why torch could not be imported, when it could not."""
    torch_cuda: str | None = None
    """torch.version.cuda: the CUDA runtime torch was built with (None: CPU build)."""
    cuda_usable: bool = False
    """torch.cuda.is_available() (and at least one device)."""
    cuda_device_count: int = 0
    """torch.cuda.device_count(): the GPUs the run can use."""
    nccl: str | None = None
    driver: str | None = None
    driver_cuda: str | None = None
    """Newest CUDA version the driver supports, e.g. '12.4'."""
    nvml_error: str | None = None
    gpu_source: Literal["nvml", "torch", "none"] = "none"
    gpus: list[GpuInfo] = field(default_factory=list)
    """The GPUs the run can use, in CUDA order (after CUDA_VISIBLE_DEVICES)."""
    physical_gpus: int = 0
    """GPUs NVML sees on the machine, visible or not."""
    pairs: list[PairInfo] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """The environment variables doctor explains (only those set)."""
    net_interfaces: tuple[str, ...] = ()
    cpu_count: int = 1
    host_total_bytes: int | None = None
    host_available_bytes: int | None = None
    hub_cli: str = "hf"
    """The Hugging Face CLI name of the installed huggingface_hub: 'hf' (>= 0.34) or 'huggingface-cli'."""
    model: ModelInfo | None = None
    output_disk: DiskInfo | None = None
    cache_disk: DiskInfo | None = None
    live: list[LinkInfo] | None = None
    """None when the live check did not run (--no-live)."""
    live_skipped: list[tuple[str, str]] = field(default_factory=list)
    """(label, why) of transports the live check could not try here, e.g. ('nccl', 'needs 2 GPUs')."""
    live_error: str | None = None
    """Why the live check could not run at all (e.g. ppsvd.backends.linkcheck not importable)."""
    probe_errors: list[str] = field(default_factory=list)
    """Things that could not be probed (shown in details, never fatal)."""


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    name: str
    status: Status
    summary: str
    fix: str | None = None
    """What to do, for every warn and fail (None for pass and skip)."""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "fix": self.fix,
            "details": self.details,
        }
