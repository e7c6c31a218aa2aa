"""Gathering facts: NVML, torch, the environment, the Hugging Face cache, disks. Side effects live here.

Every probe catches its own failures and records them in Facts.probe_errors: doctor reports what
it could not learn instead of crashing. NVML and torch can be injected (tests pass fakes); when
not given they are imported lazily, so importing this module imports neither.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppsvd.config import SYNTHETIC_MODEL, TINY_MODEL, RunConfig
from ppsvd.doctor.checks import version_tuple
from ppsvd.doctor.facts import DiskInfo, Facts, GpuInfo, ModelInfo, PairInfo
from ppsvd.models import hub, pixels

PACKAGES = ("torch", "diffusers", "transformers", "pyzmq", "nvidia-ml-py", "huggingface_hub")

ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NCCL_P2P_DISABLE",
    "NCCL_P2P_LEVEL",
    "NCCL_SHM_DISABLE",
    "NCCL_IB_DISABLE",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
)

EMBEDDED_MODELS = (SYNTHETIC_MODEL, TINY_MODEL)


# NVML constants, by value: pynvml defines NVML_P2P_CAPS_INDEX_READ as `0,` (a tuple, a stray comma
# in nvidia-ml-py), which ctypes rejects, so these are not read from the module.
P2P_CAPS_READ = 0
P2P_CAPS_WRITE = 1
P2P_CAPS_NVLINK = 2
P2P_STATUS_OK = 0
P2P_REASONS = {
    1: "chipset not supported",
    2: "GPU not supported",
    3: "topology not supported (e.g. across CPU sockets or PCIe switches)",
    4: "disabled by registry key",
    5: "not supported",
    6: "unknown",
}
TOPOLOGY = {0: "internal", 10: "single", 20: "multiple", 30: "hostbridge", 40: "node", 50: "system"}
NVLINK_MAX_LINKS = 18


def gather(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    nvml: Any = None,
    torch_module: Any = None,
) -> Facts:
    """Probe everything except the live transport check (live.py)."""
    env = dict(os.environ if env is None else env)
    facts = Facts()
    probe_versions(facts)
    probe_torch(facts, torch_module)
    probe_gpus(facts, env, nvml=nvml, torch_module=torch_module)
    probe_env(facts, env)
    probe_host(facts)
    try:
        facts.model = probe_model(config.model.model, env, weights=config.model.weights, revision=config.model.revision)
    except Exception as exc:  # e.g. a cache folder it cannot read
        facts.probe_errors.append(f"model {config.model.model}: {type(exc).__name__}: {exc}")
    facts.output_disk = probe_disk(Path(config.output.output_dir))
    if facts.model is not None and facts.model.kind == "hub" and facts.model.cache_dir:
        facts.cache_disk = probe_disk(Path(facts.model.cache_dir))
    return facts


# -- versions ---------------------------------------------------------------------------------


def probe_versions(facts: Facts) -> None:
    facts.python = platform.python_version()
    facts.platform = f"{platform.system()} {platform.release()} {platform.machine()}"
    for name in PACKAGES:
        try:
            facts.packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts.packages[name] = None
    hub = facts.packages.get("huggingface_hub")
    facts.hub_cli = "hf" if hub is None or version_tuple(hub) >= (0, 34) else "huggingface-cli"


def probe_torch(facts: Facts, torch_module: Any = None) -> None:
    torch = torch_module
    if torch is None:
        try:
            import torch  # noqa: PLC0415 - lazy on purpose: doctor must import without torch
        except Exception as exc:  # ImportError, or a broken CUDA install raising OSError
            facts.torch_error = f"{type(exc).__name__}: {exc}"
            return
    facts.packages["torch"] = facts.packages.get("torch") or str(getattr(torch, "__version__", "")) or None
    facts.torch_cuda = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        facts.cuda_usable = bool(torch.cuda.is_available()) and int(torch.cuda.device_count()) > 0
        facts.cuda_device_count = int(torch.cuda.device_count()) if facts.cuda_usable else 0
    except Exception as exc:
        facts.probe_errors.append(f"torch.cuda.is_available(): {exc}")
    if facts.torch_cuda:
        try:
            version = torch.cuda.nccl.version()
            facts.nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as exc:
            facts.probe_errors.append(f"torch.cuda.nccl.version(): {exc}")


# -- GPUs -------------------------------------------------------------------------------------


def probe_gpus(facts: Facts, env: Mapping[str, str], *, nvml: Any = None, torch_module: Any = None) -> None:
    """GPUs via NVML (names, memory, P2P, NVLink); torch.cuda when NVML is missing."""
    if nvml is None:
        try:
            import pynvml as nvml  # noqa: PLC0415 - nvidia-ml-py
        except Exception as exc:
            facts.nvml_error = f"nvidia-ml-py not importable ({exc})"
            nvml = None
    if nvml is not None and _probe_nvml(facts, env, nvml):
        if not facts.cuda_usable or len(facts.gpus) == facts.cuda_device_count:
            return
        # NVML's view (all GPUs, filtered by our reading of CUDA_VISIBLE_DEVICES) disagrees with
        # CUDA's, e.g. MIG instances or an unusual CUDA_VISIBLE_DEVICES: trust torch for the list.
        facts.probe_errors.append(
            f"NVML lists {len(facts.gpus)} visible GPU(s) but torch sees {facts.cuda_device_count}: GPU facts from "
            "torch"
        )
        facts.gpus.clear()
        facts.pairs.clear()
    if facts.cuda_usable:
        torch = torch_module
        if torch is None:
            import torch  # noqa: PLC0415
        _probe_torch_gpus(facts, torch)


def _probe_nvml(facts: Facts, env: Mapping[str, str], nvml: Any) -> bool:
    try:
        nvml.nvmlInit()
    except Exception as exc:
        facts.nvml_error = f"NVML unavailable: {_nvml_text(exc)}"
        return False
    try:
        try:
            facts.driver = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            facts.probe_errors.append(f"driver version: {_nvml_text(exc)}")
        try:
            cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
            facts.driver_cuda = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception as exc:
            facts.probe_errors.append(f"driver CUDA version: {_nvml_text(exc)}")
        count = int(nvml.nvmlDeviceGetCount())
        facts.physical_gpus = count
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = []
        for h in handles:
            try:
                uuids.append(_text(nvml.nvmlDeviceGetUUID(h)))
            except Exception:
                uuids.append("")
        visible = visible_indices(env.get("CUDA_VISIBLE_DEVICES"), count, uuids)
        for ordinal, phys in enumerate(visible):
            facts.gpus.append(_nvml_gpu(nvml, handles[phys], ordinal, phys, uuids[phys], facts))
        for a in range(len(visible)):
            for b in range(a + 1, len(visible)):
                facts.pairs.append(_nvml_pair(nvml, handles[visible[a]], handles[visible[b]], a, b))
        facts.gpu_source = "nvml"
        return True
    except Exception as exc:
        facts.nvml_error = f"NVML query failed: {_nvml_text(exc)}"
        facts.gpus.clear()
        facts.pairs.clear()
        return False
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_gpu(nvml: Any, handle: Any, ordinal: int, phys: int, uuid: str, facts: Facts) -> GpuInfo:
    name = _text(nvml.nvmlDeviceGetName(handle))
    total = free = None
    capability = None
    bus = None
    links = None
    try:
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        total, free = int(mem.total), int(mem.free)
    except Exception as exc:
        facts.probe_errors.append(f"GPU {ordinal} memory: {_nvml_text(exc)}")
    try:
        capability = tuple(int(x) for x in nvml.nvmlDeviceGetCudaComputeCapability(handle))
    except Exception as exc:
        facts.probe_errors.append(f"GPU {ordinal} compute capability: {_nvml_text(exc)}")
    try:
        bus = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    except Exception:
        pass
    try:
        active = 0
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS))):
            try:
                if int(nvml.nvmlDeviceGetNvLinkState(handle, link)) == 1:  # NVML_FEATURE_ENABLED
                    active += 1
            except Exception:
                # NotSupported / InvalidArgument past the last link: stop counting.
                break
        links = active
    except Exception:
        links = None
    return GpuInfo(
        index=ordinal,
        name=name,
        total_bytes=total,
        free_bytes=free,
        capability=capability,  # type: ignore[arg-type]
        uuid=uuid or None,
        pci_bus_id=bus,
        nvml_index=phys,
        nvlinks_active=links,
    )


def _nvml_pair(nvml: Any, ha: Any, hb: Any, a: int, b: int) -> PairInfo:
    p2p: bool | None
    reason = None
    try:
        statuses = [
            int(nvml.nvmlDeviceGetP2PStatus(x, y, cap))
            for x, y in ((ha, hb), (hb, ha))
            for cap in (P2P_CAPS_READ, P2P_CAPS_WRITE)
        ]
        bad = [s for s in statuses if s != P2P_STATUS_OK]
        p2p = not bad
        if bad:
            reason = P2P_REASONS.get(bad[0], f"status {bad[0]}")
    except Exception as exc:
        p2p, reason = None, f"NVML could not tell: {_nvml_text(exc)}"
    try:
        nvlink = int(nvml.nvmlDeviceGetP2PStatus(ha, hb, P2P_CAPS_NVLINK)) == P2P_STATUS_OK
    except Exception:
        nvlink = None
    try:
        level = int(nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
        topology = TOPOLOGY.get(level, str(level))
    except Exception:
        topology = None
    return PairInfo(a=a, b=b, p2p=p2p, p2p_reason=reason, nvlink=nvlink, topology=topology)


def _probe_torch_gpus(facts: Facts, torch: Any) -> None:
    try:
        count = int(torch.cuda.device_count())
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            free = total = None
            try:
                free, total = (int(x) for x in torch.cuda.mem_get_info(i))
            except Exception as exc:
                facts.probe_errors.append(f"GPU {i} free memory: {exc}")
                total = int(getattr(props, "total_memory", 0)) or None
            facts.gpus.append(
                GpuInfo(
                    index=i,
                    name=str(props.name),
                    total_bytes=total,
                    free_bytes=free,
                    capability=(int(props.major), int(props.minor)),
                )
            )
        for a in range(count):
            for b in range(a + 1, count):
                try:
                    ok = bool(torch.cuda.can_device_access_peer(a, b)) and bool(torch.cuda.can_device_access_peer(b, a))
                    facts.pairs.append(
                        PairInfo(a=a, b=b, p2p=ok, p2p_reason=None if ok else "CUDA reports no peer access")
                    )
                except Exception as exc:
                    facts.pairs.append(PairInfo(a=a, b=b, p2p=None, p2p_reason=f"torch could not tell: {exc}"))
        facts.gpu_source = "torch"
    except Exception as exc:
        facts.probe_errors.append(f"torch GPU query: {exc}")


def visible_indices(value: str | None, count: int, uuids: list[str]) -> list[int]:
    """Physical (NVML) indices CUDA will use, in CUDA order, as CUDA_VISIBLE_DEVICES selects them.

    Like CUDA: a comma list of indices or GPU-UUID prefixes; parsing stops at the first entry that
    names no device; unset means all. (CUDA orders unset lists fastest-first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID; on identical GPUs the two orders agree.)
    """
    if value is None:
        return list(range(count))
    chosen: list[int] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            break
        if item.lstrip("-").isdigit():
            idx = int(item)
            if not 0 <= idx < count or idx in chosen:
                break
            chosen.append(idx)
            continue
        matches = [i for i, u in enumerate(uuids) if u and (u.startswith(item) or u.startswith("GPU-" + item))]
        if len(matches) != 1 or matches[0] in chosen:
            break
        chosen.append(matches[0])
    return chosen


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(exc: BaseException) -> str:
    text = str(exc)
    return text or type(exc).__name__


# -- environment and host ---------------------------------------------------------------------


def probe_env(facts: Facts, env: Mapping[str, str]) -> None:
    facts.env = {name: env[name] for name in ENV_VARS if name in env}
    try:
        facts.net_interfaces = tuple(name for _i, name in socket.if_nameindex())
    except OSError as exc:
        facts.probe_errors.append(f"network interfaces: {exc}")


def probe_host(facts: Facts) -> None:
    try:
        facts.cpu_count = len(os.sched_getaffinity(0))
    except AttributeError:
        facts.cpu_count = os.cpu_count() or 1
    try:
        import psutil  # noqa: PLC0415

        vm = psutil.virtual_memory()
        facts.host_total_bytes, facts.host_available_bytes = int(vm.total), int(vm.available)
    except Exception as exc:
        facts.probe_errors.append(f"host memory: {exc}")


# -- model ------------------------------------------------------------------------------------


def probe_model(
    model: str, env: Mapping[str, str], *, weights: str = "pretrained", revision: str | None = None
) -> ModelInfo:
    """Where the planned model's files are and which components are incomplete, as the loader
    sees them (models.hub: the same local/hub answer, cache folder and file list), and the VAE
    scale factor its config on disk gives (nothing is downloaded)."""
    vae = pixels.model_vae_config(model, weights=weights, revision=revision, fetch=False, env=env)
    factor = pixels.vae_scale_factor(vae) if vae is not None or model == SYNTHETIC_MODEL else None
    if model in EMBEDDED_MODELS:
        return ModelInfo(model=model, kind="embedded", present=True, vae_scale_factor=factor)
    where = hub.locate(model)
    cache = None if where == "local" else hub.hub_cache_dir(env)
    root = hub.model_root(model, where, env=env)
    missing = hub.missing_components(hub.missing_files(model, where, env=env)) if root is not None else hub.COMPONENTS
    files, size = _count_files(root) if root is not None else (0, 0)
    path = str(root) if root is not None else (os.path.expanduser(model) if where == "local" else None)
    incomplete = 0
    if where == "hub":
        blobs = hub.repo_cache_dir(model, env) / "blobs"
        incomplete = len(list(blobs.glob("*.incomplete"))) if blobs.is_dir() else 0
    return ModelInfo(
        model=model,
        kind=where,
        present=not missing,
        path=path,
        files=files,
        size_bytes=size,
        missing=missing,
        incomplete_downloads=incomplete,
        cache_dir=cache,
        vae_scale_factor=factor,
    )


def _count_files(root: Path) -> tuple[int, int]:
    """(files, bytes) under root, following the cache's symlinks into blobs/ (a dangling link is skipped)."""
    files = size = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                files += 1
                size += path.stat().st_size
        except OSError:
            continue
    return files, size


# -- disk -------------------------------------------------------------------------------------


def probe_disk(path: Path) -> DiskInfo:
    path = path.expanduser()
    existing = path.resolve() if path.exists() else path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
        free, total = int(usage.free), int(usage.total)
    except OSError:
        free = total = None
    return DiskInfo(
        path=str(path),
        existing=str(existing),
        free_bytes=free,
        total_bytes=total,
        writable=os.access(existing, os.W_OK),
    )
