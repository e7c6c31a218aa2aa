"""Pure check logic: Facts + the planned run in, a list of CheckResult out. No I/O, no torch.

Rule for statuses: `fail` only for what the planned run needs (it would crash, hang or not start);
`warn` for what makes it slower or is worth knowing; `skip` when a check does not apply here.
Every warn and fail carries a fix. The exit code is 1 when any check fails, else 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppsvd.config import RunConfig, auto_device
from ppsvd.doctor.facts import CheckResult, Facts, GpuInfo, LinkInfo, PairInfo
from ppsvd.environment import version_floors
from ppsvd.models import memory, pixels
from ppsvd.models.hub import predownload_command, stage_components
from ppsvd.planning.steps import partition_steps
from ppsvd.shapes import LatentShape

CHECK_NAMES = ("versions", "gpus", "placement", "p2p", "environment", "model", "memory", "disk", "transport")

MIN_VERSIONS = version_floors()
"""The lowest versions this ppsvd accepts (its own requirements, from the installed package's metadata)."""

SVD_DOWNLOAD_BYTES = 14 * 10**9
"""What the pre-download command fetches for SVD-XT: the diffusers folders in fp32 and fp16 (~13.5 GB)."""

GIB = 1024**3
TRUE_VALUES = ("1", "true", "yes", "on")

ENV_EFFECTS = {
    "CUDA_VISIBLE_DEVICES": "Which GPUs the run sees, in this order: stage k runs on the k-th listed GPU.",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID numbers GPUs as nvidia-smi does; unset, CUDA puts the fastest first "
    "(the same order on identical GPUs).",
    "NCCL_P2P_DISABLE": "1: NCCL never copies GPU to GPU directly; every nccl hop goes through host memory "
    "(slower). Only for working around a P2P hang.",
    "NCCL_P2P_LEVEL": "The farthest topology distance at which NCCL still uses P2P (NVL, PIX, PXB, PHB, SYS).",
    "NCCL_SHM_DISABLE": "1: no shared-memory path; GPU pairs without P2P then go over sockets (slowest).",
    "NCCL_IB_DISABLE": "1: NCCL does not try InfiniBand. The guide sets it when NCCL init fails on a machine "
    "without InfiniBand; runs on one host never use IB.",
    "NCCL_DEBUG": "INFO: NCCL logs its init and the path of every connection (P2P, SHM, NET): the first thing "
    "to set when nccl init fails or hangs. WARN: errors only.",
    "NCCL_SOCKET_IFNAME": "Network interfaces NCCL's bootstrap may use (prefixes; ^ excludes, = exact). "
    "A value matching no interface makes nccl init fail.",
    "GLOO_SOCKET_IFNAME": "The interface gloo binds (exact names). It must exist; on one host lo works.",
    "HF_HOME": "Root of the Hugging Face cache: models live in HF_HOME/hub unless HF_HUB_CACHE is set.",
    "HF_HUB_CACHE": "Where Hugging Face models are cached (the run loads from here).",
    "HF_HUB_OFFLINE": "1: never download; a model that is not fully cached fails to load.",
}


@dataclass(frozen=True)
class Context:
    """The facts, the run as asked (config.device None: not given) and what it resolves to here."""

    facts: Facts
    config: RunConfig
    device: str
    dtype: str
    transport: str

    @property
    def family(self) -> str:
        return memory.model_family(self.config.model.model)

    @property
    def needs_diffusers(self) -> bool:
        return self.family != "synthetic"

    @property
    def hops(self) -> list[tuple[int, int]]:
        return [(k, k + 1) for k in range(self.config.layout.nproc - 1)]

    @property
    def planned_link(self) -> str:
        """The live-check label of the transport the run would use."""
        return {"zmq": "zmq-ipc"}.get(self.transport, self.transport)


def context(facts: Facts, config: RunConfig) -> Context:
    """Resolve the device as `run` would on this machine, then dtype and transport by RunConfig's rules."""
    resolved = config.replace(device=config.model.device or auto_device(facts.cuda_usable))
    return Context(
        facts=facts,
        config=config,
        device=resolved.model.device,
        dtype=resolved.model.resolved_dtype,
        transport=resolved.resolved_transport,
    )


def run_checks(facts: Facts, config: RunConfig) -> list[CheckResult]:
    ctx = context(facts, config)
    checks: list[Callable[[Context], CheckResult]] = [
        check_versions,
        check_gpus,
        check_placement,
        check_p2p,
        check_environment,
        check_model,
        check_memory,
        check_disk,
        check_transport,
    ]
    return [check(ctx) for check in checks]


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0


# -- helpers ----------------------------------------------------------------------------------


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def version_tuple(text: str | None) -> tuple[int, ...]:
    """The leading numbers of a version, enough to compare with a minimum: '2.5.1+cu124' -> (2, 5, 1),
    '0.34.0rc1' -> (0, 34, 0), '550.54.15' -> (550, 54, 15), None -> ()."""
    parts = []
    for piece in (text or "").split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _floor(name: str) -> tuple[int, ...]:
    return MIN_VERSIONS.get(name, ())


def _floor_text(name: str) -> str:
    return ".".join(map(str, _floor(name))) or "any version"


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUE_VALUES


def gpu_label(g: GpuInfo) -> str:
    return f"GPU {g.index} ({g.name})"


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return " ".join(str(v) for v in shape)


def _worst(statuses: list[str]) -> str:
    for status in ("fail", "warn"):
        if status in statuses:
            return status
    return "pass"


def _result(name: str, status: str, summary: str, fixes: list[str], details: dict[str, Any]) -> CheckResult:
    fix = " ".join(dict.fromkeys(f for f in fixes if f)) or None
    if status in ("pass", "skip"):
        fix = None
    return CheckResult(name=name, status=status, summary=summary, fix=fix, details=details)  # type: ignore[arg-type]


# -- versions ---------------------------------------------------------------------------------


class _Rows:
    """The version table being built: one row per component, and the fixes of those that do not pass."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.fixes: list[str] = []

    def add(self, component: str, version: str | None, status: str, note: str = "", fix: str = "") -> None:
        self.rows.append({"component": component, "version": version, "status": status, "note": note})
        if status != "pass" and fix:
            self.fixes.append(fix)


def check_versions(ctx: Context) -> CheckResult:
    f = ctx.facts
    table = _Rows()
    for add_rows in (_python_and_torch_rows, _cuda_rows, _driver_row, _nccl_row, _library_rows):
        add_rows(ctx, table)
    rows = table.rows
    parts = [f"Python {f.python}", f"torch {f.packages.get('torch') or 'missing'}" + ("" if f.torch_cuda else " (CPU)")]
    parts += [
        f"{name} {value}" for name, value in (("CUDA", f.torch_cuda), ("driver", f.driver), ("NCCL", f.nccl)) if value
    ]
    parts += [
        f"{r['component']} {r['version'] or 'missing'}"
        for r in rows
        if r["component"] in ("diffusers", "transformers", "pyzmq")
    ]
    bad = [r["component"] for r in rows if r["status"] != "pass"]
    summary = ", ".join(parts) + (f"; problem: {', '.join(bad)}" if bad else "")
    return _result(
        "versions",
        _worst([r["status"] for r in rows]),
        summary,
        table.fixes,
        {"components": rows, "platform": f.platform},
    )


def _python_and_torch_rows(ctx: Context, table: _Rows) -> None:
    f = ctx.facts
    py = version_tuple(f.python)
    table.add(
        "python",
        f.python,
        "pass" if py >= _floor("python") else "fail",
        f">= {_floor_text('python')} required",
        f"Use Python {_floor_text('python')} or newer.",
    )
    torch_v = f.packages.get("torch")
    if torch_v is None or f.torch_error:
        table.add(
            "torch",
            torch_v,
            "fail",
            f.torch_error or "not installed",
            "Install torch (pip install torch; a CUDA build for GPUs: https://pytorch.org/get-started/locally/).",
        )
    elif version_tuple(torch_v) < _floor("torch"):
        minimum = _floor_text("torch")
        table.add("torch", torch_v, "fail", f">= {minimum} required", f"Upgrade torch to {minimum} or newer.")
    else:
        table.add("torch", torch_v, "pass")


def _cuda_rows(ctx: Context, table: _Rows) -> None:
    f = ctx.facts
    has_gpus = bool(f.gpus) or f.physical_gpus > 0
    if f.torch_cuda is not None:
        table.add("cuda runtime", f.torch_cuda, "pass")
    elif ctx.device == "cuda" or has_gpus:
        status = "fail" if ctx.device == "cuda" or (ctx.config.model.device is None and has_gpus) else "warn"
        table.add(
            "cuda runtime",
            None,
            status,
            "torch is a CPU build",
            "Install a CUDA build of torch that the driver supports "
            f"(driver CUDA {f.driver_cuda or '?'}: pip install torch --index-url https://download.pytorch.org/whl/cu12x).",
        )
    else:
        table.add("cuda runtime", None, "pass", "CPU build of torch (no GPU here)")


def _driver_row(ctx: Context, table: _Rows) -> None:
    f = ctx.facts
    if f.driver is None:
        has_gpus = bool(f.gpus) or f.physical_gpus > 0
        table.add("driver", None, "pass", "no NVIDIA driver (NVML)" if not has_gpus else "driver version unknown")
        return
    status, fix = "pass", ""
    if f.torch_cuda and f.driver_cuda:
        built, supported = version_tuple(f.torch_cuda), version_tuple(f.driver_cuda)
        if built[:1] > supported[:1]:
            status = "fail" if ctx.device == "cuda" else "warn"
            fix = (
                f"torch is built for CUDA {f.torch_cuda} but driver {f.driver} supports only CUDA {f.driver_cuda}: "
                f"update the NVIDIA driver, or install a torch built for CUDA {f.driver_cuda} or older."
            )
        elif built[:2] > supported[:2]:
            status = "warn"
            fix = (
                f"torch is built for CUDA {f.torch_cuda}, newer than the driver's CUDA {f.driver_cuda}: "
                "minor-version compatibility usually works, but update the driver if kernels fail to load."
            )
    table.add("driver", f.driver, status, f"supports CUDA {f.driver_cuda or '?'}", fix)


def _nccl_row(ctx: Context, table: _Rows) -> None:
    f = ctx.facts
    if f.nccl is not None:
        table.add("nccl", f.nccl, "pass")
    elif ctx.transport == "nccl" and ctx.config.layout.nproc > 1:
        table.add(
            "nccl",
            None,
            "fail",
            "torch has no NCCL",
            "Install a CUDA build of torch (it bundles NCCL), or plan --transport gloo or zmq.",
        )
    else:
        table.add("nccl", None, "pass", "not available" + (" (CPU build of torch)" if f.torch_cuda is None else ""))


def _library_rows(ctx: Context, table: _Rows) -> None:
    """diffusers and transformers (not for the synthetic model), pyzmq, nvidia-ml-py."""
    f = ctx.facts
    for name in ("diffusers", "transformers"):
        v = f.packages.get(name)
        minimum = _floor_text(name)
        if not ctx.needs_diffusers:
            table.add(name, v, "pass", "not needed for --model synthetic")
        elif v is None:
            table.add(name, None, "fail", "not installed", f"pip install '{name}>={minimum}'")
        elif version_tuple(v) < _floor(name):
            table.add(name, v, "fail", f">= {minimum} required", f"pip install -U '{name}>={minimum}'")
        else:
            table.add(name, v, "pass")
    zmq_v = f.packages.get("pyzmq")
    if zmq_v is None:
        table.add(
            "pyzmq",
            None,
            "fail" if ctx.transport == "zmq" else "warn",
            "not installed: no zmq transport",
            f"pip install 'pyzmq>={_floor_text('pyzmq')}'",
        )
    elif version_tuple(zmq_v) < _floor("pyzmq"):
        minimum = _floor_text("pyzmq")
        table.add(
            "pyzmq",
            zmq_v,
            "fail" if ctx.transport == "zmq" else "warn",
            f">= {minimum} required",
            f"pip install -U 'pyzmq>={minimum}'",
        )
    else:
        table.add("pyzmq", zmq_v, "pass")
    nvml_v = f.packages.get("nvidia-ml-py")
    if nvml_v is None:
        table.add(
            "nvidia-ml-py",
            None,
            "warn",
            "not installed: GPU facts from torch only (no NVLink, no driver)",
            "pip install nvidia-ml-py",
        )
    else:
        table.add("nvidia-ml-py", nvml_v, "pass", "" if f.gpu_source == "nvml" else (f.nvml_error or ""))


# -- GPUs -------------------------------------------------------------------------------------

NO_GPU_FIX = (
    "No GPU needed to check the pipeline: `ppsvd simulate` (synthetic model, any --nproc), or "
    "`ppsvd run --device cpu --model tiny` (a small real SVD). Plan this check with --device cpu."
)


def _gpu_json(g: GpuInfo) -> dict[str, Any]:
    return {
        "index": g.index,
        "name": g.name,
        "total_bytes": g.total_bytes,
        "free_bytes": g.free_bytes,
        "capability": None if g.capability is None else f"{g.capability[0]}.{g.capability[1]}",
        "uuid": g.uuid,
        "pci_bus_id": g.pci_bus_id,
        "nvml_index": g.nvml_index,
        "nvlinks_active": g.nvlinks_active,
    }


def check_gpus(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    details = {
        "source": f.gpu_source,
        "count": len(f.gpus),
        "physical": f.physical_gpus,
        "cuda_usable": f.cuda_usable,
        "driver": f.driver,
        "nvml_error": f.nvml_error,
        "gpus": [_gpu_json(g) for g in f.gpus],
    }
    n = len(f.gpus)
    if ctx.device == "cpu" and ctx.dtype == "fp16" and ctx.family != "synthetic":
        cpu_fix = "--dtype fp16 is not supported on the CPU for SVD: use --dtype fp32 or bf16."
    else:
        cpu_fix = ""
    if n == 0:
        if f.physical_gpus > 0:
            summary = (
                f"no GPU visible: CUDA_VISIBLE_DEVICES={f.env.get('CUDA_VISIBLE_DEVICES', '')!r} "
                f"hides all {f.physical_gpus} GPUs"
            )
            fix = "Unset CUDA_VISIBLE_DEVICES or list the GPUs to use, e.g. CUDA_VISIBLE_DEVICES=0,1."
        else:
            why = f.nvml_error or "NVML found none"
            summary = f"no NVIDIA GPU on this machine ({why}); a planned run uses the CPU"
            fix = NO_GPU_FIX
        status = "fail" if p.model.device == "cuda" or cpu_fix else "warn"
        if p.model.device == "cuda":
            fix = fix + " Or drop --device cuda."
        return _result("gpus", status, summary, [cpu_fix, fix], details)

    names = sorted({g.name for g in f.gpus})
    summary = f"{n} GPU{'s' if n > 1 else ''}: " + ", ".join(
        f"{sum(g.name == name for g in f.gpus)}x {name}" for name in names
    )
    mem = [g.total_bytes for g in f.gpus if g.total_bytes]
    if mem:
        summary += f", {gib(min(mem))}" + ("" if min(mem) == max(mem) else f"-{gib(max(mem))}") + " each"
    statuses, fixes = ["pass"], []
    if not f.cuda_usable:
        statuses.append("warn" if p.model.device == "cpu" else "fail")
        summary += "; torch cannot use them" + ("" if p.model.device else ": the run would fall back to the CPU")
        fixes.append(
            "Install a CUDA build of torch that this driver supports "
            f"(driver CUDA {f.driver_cuda or '?'}), see https://pytorch.org/get-started/locally/; "
            "or plan a CPU run with --device cpu."
        )
    if cpu_fix:
        statuses.append("fail")
        fixes.append(cpu_fix)
    used = f.gpus[: p.layout.nproc] if ctx.device == "cuda" else []
    if ctx.device == "cuda":
        if ctx.dtype == "bf16":
            old = [g for g in used if g.capability and g.capability < (8, 0)]
            if old:
                statuses.append("fail")
                fixes.append(
                    f"bf16 needs compute capability 8.0+ (Ampere); {', '.join(gpu_label(g) for g in old)} "
                    f"{'is' if len(old) == 1 else 'are'} older: use --dtype fp16."
                )
        if ctx.dtype == "fp16":
            old = [g for g in used if g.capability and g.capability < (7, 0)]
            if old:
                statuses.append("warn")
                fixes.append(
                    f"{', '.join(gpu_label(g) for g in old)} predate tensor cores (capability < 7.0): "
                    "fp16 runs slowly there, and fused attention may be missing."
                )
        if len({g.name for g in used}) > 1:
            statuses.append("warn")
            fixes.append(
                "The planned stages run on different GPU models: the slowest sets the pipeline's pace; "
                "pick identical GPUs with CUDA_VISIBLE_DEVICES."
            )
    elif f.cuda_usable:
        summary += "; the planned run uses the CPU (--device cpu)"
    return _result("gpus", _worst(statuses), summary, fixes, details)


# -- placement --------------------------------------------------------------------------------


def check_placement(ctx: Context) -> CheckResult:

    f, p = ctx.facts, ctx.config
    plan = partition_steps(p.job.total_steps, p.layout.nproc)
    n = len(f.gpus)
    stages = []
    for k, steps in enumerate(plan.ranges):
        loads = list(stage_components(k == 0, k == p.layout.nproc - 1)) if ctx.needs_diffusers else ["synthetic"]
        if ctx.device == "cuda" and n:
            g = f.gpus[k % n]
            device, gpu = f"cuda:{k % n}", g.name
        else:
            device, gpu = "cpu", None
        stages.append({"stage": k, "device": device, "gpu": gpu, "steps": [steps.start, steps.stop], "loads": loads})
    details = {
        "device": ctx.device,
        "nproc": p.layout.nproc,
        "total_steps": p.job.total_steps,
        "split": plan.describe(),
        "stages": stages,
    }
    statuses, fixes = ["pass"], []
    if ctx.device == "cuda" and n == 0:
        return _result(
            "placement",
            "skip",
            f"{p.layout.nproc} stage(s) planned on CUDA but no GPU is visible (see gpus)",
            [],
            details,
        )
    if ctx.device == "cuda":
        if p.layout.nproc > n:
            shared = ", ".join(f"stage {k} and stage {k % n} on GPU {k % n}" for k in range(n, p.layout.nproc))
            summary = (
                f"--nproc {p.layout.nproc} but only {n} GPU{'s' if n > 1 else ''} visible: two ranks on one GPU "
                f"({shared})"
            )
            statuses.append("fail")
            fixes.append(
                f"Use --nproc {n} or fewer: ppsvd runs one stage per GPU (NCCL cannot put two ranks on "
                "one GPU, and two stages would share its memory and compute). Make more GPUs visible "
                "with CUDA_VISIBLE_DEVICES if the machine has them."
            )
        else:
            summary = (
                f"{p.layout.nproc} stage{'s' if p.layout.nproc > 1 else ''} on {p.layout.nproc} of {n} GPUs, one each"
            )
    else:
        summary = f"{p.layout.nproc} stage{'s' if p.layout.nproc > 1 else ''} on the CPU ({f.cpu_count} cores)"
        if p.layout.nproc > f.cpu_count and ctx.family != "synthetic":
            statuses.append("warn")
            fixes.append(
                f"{p.layout.nproc} stages share {f.cpu_count} cores: each step is slower than alone. "
                "Fine for checking correctness; use --model synthetic to study scheduling."
            )
    summary += f"; steps {plan.describe()}"
    if not plan.is_even:
        statuses.append("warn")
        fixes.append(
            f"Use a --total-steps divisible by {p.layout.nproc} (e.g. "
            f"{p.layout.nproc * max(1, round(p.job.total_steps / p.layout.nproc))})."
        )
    return _result("placement", _worst(statuses), summary, fixes, details)


# -- peer-to-peer -----------------------------------------------------------------------------


def _pair_map(pairs: list[PairInfo]) -> dict[tuple[int, int], PairInfo]:
    return {(p.a, p.b): p for p in pairs} | {(p.b, p.a): p for p in pairs}


def p2p_order(gpus: list[GpuInfo], pairs: list[PairInfo], length: int) -> list[GpuInfo] | None:
    """GPUs for `length` stages such that every consecutive pair has P2P, or None (depth-first search)."""
    ok = {(p.a, p.b) for p in pairs if p.p2p} | {(p.b, p.a) for p in pairs if p.p2p}
    idx = [g.index for g in gpus]

    def extend(path: list[int]) -> list[int] | None:
        if len(path) == length:
            return path
        for nxt in idx:
            if nxt not in path and (path[-1], nxt) in ok:
                found = extend(path + [nxt])
                if found:
                    return found
        return None

    for start in idx:
        found = extend([start])
        if found:
            by_index = {g.index: g for g in gpus}
            return [by_index[i] for i in found]
    return None


def check_p2p(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    n = len(f.gpus)
    env_disabled = truthy(f.env.get("NCCL_P2P_DISABLE"))
    pairs = f.pairs
    details: dict[str, Any] = {
        "pairs": [
            {"a": q.a, "b": q.b, "p2p": q.p2p, "nvlink": q.nvlink, "topology": q.topology, "reason": q.p2p_reason}
            for q in pairs
        ],
        "missing": [],
        "planned_hops": [],
        "p2p_disabled_by_env": env_disabled,
        "suggested_visible_devices": None,
    }
    if n < 2:
        return _result("p2p", "skip", "fewer than 2 GPUs: no GPU-to-GPU hops", [], details)
    by_pair = _pair_map(pairs)
    missing = [q for q in pairs if q.p2p is False]
    unknown = [q for q in pairs if q.p2p is None]
    details["missing"] = [f"{q.a}-{q.b}" for q in missing]
    on_cuda = ctx.device == "cuda"
    hops = []
    for a, b in ctx.hops if on_cuda else []:
        ga, gb = a % n, b % n
        q = by_pair.get((ga, gb))
        hops.append(
            {
                "from_stage": a,
                "to_stage": b,
                "gpus": [ga, gb],
                "p2p": None if q is None else q.p2p,
                "nvlink": None if q is None else q.nvlink,
            }
        )
    details["planned_hops"] = hops
    nvl = [q for q in pairs if q.nvlink]
    known_nvl = [q for q in pairs if q.nvlink is not None]
    summary = f"P2P between {len(pairs) - len(missing) - len(unknown)} of {len(pairs)} GPU pairs"
    if known_nvl:
        summary += f", NVLink between {len(nvl)}"
    statuses, fixes = ["pass"], []
    if missing:
        statuses.append("warn")
        names = ", ".join(f"GPU {q.a} <-> GPU {q.b}" + (f" ({q.p2p_reason})" if q.p2p_reason else "") for q in missing)
        summary += f"; no P2P: {names}"
        affected = [h for h in hops if h["p2p"] is False]
        if affected:
            hop_text = ", ".join(
                f"stage {h['from_stage']} -> {h['to_stage']} (GPU {h['gpus'][0]} -> GPU {h['gpus'][1]})"
                for h in affected
            )
            summary += f"; affects the planned hop{'s' if len(affected) > 1 else ''} {hop_text}"
        elif on_cuda and p.layout.nproc > 1:
            summary += "; none of the planned hops"
        fix = (
            "Without P2P, NCCL sends between those GPUs through host memory (SHM; sockets if NCCL_SHM_DISABLE=1): "
            "an extra copy each way, a slower hop. For SVD's small hand-offs that is usually well under 1% of a "
            "step: the live transport check shows the real cost."
        )
        if affected:
            order = p2p_order(f.gpus, pairs, p.layout.nproc)
            if order:
                visible = ",".join(str(g.nvml_index if g.nvml_index is not None else g.index) for g in order)
                details["suggested_visible_devices"] = visible
                fix += f" To keep every planned hop on P2P, order the GPUs: CUDA_VISIBLE_DEVICES={visible}."
        fix += (
            " P2P missing on a PCIe machine is often ACS or the IOMMU in the BIOS; `nvidia-smi topo -p2p r` "
            "shows the matrix."
        )
        fixes.append(fix)
    if unknown:
        summary += f"; unknown for {len(unknown)} pair{'s' if len(unknown) > 1 else ''}"
    if env_disabled:
        statuses.append("warn")
        summary += "; NCCL_P2P_DISABLE=1 turns P2P off for every pair"
        fixes.append(
            "Unset NCCL_P2P_DISABLE unless it works around a hang you have seen: with it every nccl hop "
            "goes through host memory."
        )
    return _result("p2p", _worst(statuses), summary, fixes, details)


# -- environment ------------------------------------------------------------------------------


def ifname_matches(value: str, interfaces: tuple[str, ...]) -> list[str]:
    """Interfaces NCCL_SOCKET_IFNAME selects: comma-separated prefixes; '^' excludes; '=' means exact."""
    spec = value.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = spec.startswith("=")
    spec = spec.lstrip("=")
    names = [s.strip() for s in spec.split(",") if s.strip()]

    def hit(iface: str) -> bool:
        return any(iface == n if exact else iface.startswith(n) for n in names)

    return [i for i in interfaces if hit(i) != exclude]


def check_environment(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    variables: dict[str, dict[str, Any]] = {}
    statuses, fixes, notes = ["pass"], [], []
    multi = p.layout.nproc > 1

    def var(name: str, status: str = "pass", note: str = "", fix: str = "") -> None:
        value = f.env.get(name)
        variables[name] = {"value": value, "effect": ENV_EFFECTS[name], "status": status, "note": note or None}
        statuses.append(status)
        if status != "pass":
            fixes.append(fix)
            notes.append(f"{name}={value}" + (f" ({note})" if note else ""))

    cvd = f.env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and f.physical_gpus:
        entries = [e for e in cvd.split(",") if e.strip()]
        if len(entries) > len(f.gpus):
            var(
                "CUDA_VISIBLE_DEVICES",
                "warn",
                f"lists {len(entries)} but only {len(f.gpus)} are valid",
                "CUDA stops at the first entry that names no GPU: list existing indices only "
                f"(0-{f.physical_gpus - 1}).",
            )
        else:
            var("CUDA_VISIBLE_DEVICES", note=f"{len(f.gpus)} of {f.physical_gpus} GPUs visible")
    else:
        var("CUDA_VISIBLE_DEVICES")
    if len({g.name for g in f.gpus}) > 1 and f.env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        var(
            "CUDA_DEVICE_ORDER",
            "warn",
            "different GPU models: CUDA's numbering may differ from nvidia-smi's",
            "export CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA_VISIBLE_DEVICES indices (and stage k -> GPU k) mean "
            "the GPUs nvidia-smi shows under those numbers.",
        )
    else:
        var("CUDA_DEVICE_ORDER")
    if truthy(f.env.get("NCCL_P2P_DISABLE")):
        var("NCCL_P2P_DISABLE", "warn", "slower nccl hops", "Unset NCCL_P2P_DISABLE unless it works around a hang.")
    else:
        var("NCCL_P2P_DISABLE")
    var("NCCL_P2P_LEVEL")
    if truthy(f.env.get("NCCL_SHM_DISABLE")):
        var(
            "NCCL_SHM_DISABLE",
            "warn",
            "pairs without P2P fall back to sockets",
            "Unset NCCL_SHM_DISABLE: shared memory is the fast fallback for pairs without P2P.",
        )
    else:
        var("NCCL_SHM_DISABLE")
    var("NCCL_IB_DISABLE")
    var("NCCL_DEBUG")
    for name, needed in (
        ("NCCL_SOCKET_IFNAME", ctx.transport == "nccl" and multi),
        ("GLOO_SOCKET_IFNAME", ctx.transport == "gloo" and multi),
    ):
        value = f.env.get(name)
        if value is None or not f.net_interfaces:
            var(name)
            continue
        if name == "NCCL_SOCKET_IFNAME":
            matched = ifname_matches(value, f.net_interfaces)
        else:
            matched = [i for i in (s.strip() for s in value.split(",")) if i in f.net_interfaces]
            if len(matched) < len([s for s in value.split(",") if s.strip()]):
                matched = []
        if matched:
            var(name, note=f"selects {', '.join(matched)}")
        else:
            var(
                name,
                "fail" if needed else "warn",
                f"no such interface (have: {', '.join(f.net_interfaces)})",
                f"Set {name} to an existing interface ({'lo' if 'lo' in f.net_interfaces else f.net_interfaces[0]} "
                f"on one host) or unset it.",
            )
    var("HF_HOME")
    var("HF_HUB_CACHE")
    var("HF_HUB_OFFLINE", note="downloads disabled" if truthy(f.env.get("HF_HUB_OFFLINE")) else "")
    set_vars = [k for k, v in variables.items() if v["value"] is not None]
    if notes:
        summary = "; ".join(notes)
    elif set_vars:
        summary = f"{len(set_vars)} set ({', '.join(f'{k}={f.env[k]}' for k in set_vars)}), none slows or breaks a run"
    else:
        summary = "none of the variables that change a run is set (defaults everywhere)"
    return _result("environment", _worst(statuses), summary, fixes, {"variables": variables})


# -- model ------------------------------------------------------------------------------------


def check_model(ctx: Context) -> CheckResult:
    f = ctx.facts
    m = f.model
    offline = truthy(f.env.get("HF_HUB_OFFLINE"))
    if m is None:
        return _result("model", "skip", "not probed", [], {})
    details = {
        "model": m.model,
        "kind": m.kind,
        "present": m.present,
        "path": m.path,
        "files": m.files,
        "size_bytes": m.size_bytes,
        "missing": list(m.missing),
        "incomplete_downloads": m.incomplete_downloads,
        "cache_dir": m.cache_dir,
        "offline": offline,
        "download_command": None,
    }
    if m.kind != "embedded" and ctx.config.model.weights == "random":
        return _result(
            "model",
            "pass",
            f"--weights random: {m.model}'s architecture from ppsvd's configs, nothing to download",
            [],
            details,
        )
    if m.kind == "embedded":
        return _result("model", "pass", f"{m.model}: embedded in ppsvd, nothing to download", [], details)
    if m.kind == "local":
        if m.present:
            return _result(
                "model", "pass", f"local directory {m.path}: {m.files} files, {gib(m.size_bytes)}", [], details
            )
        what = "does not exist" if not m.files else f"lacks {', '.join(m.missing)}"
        return _result(
            "model",
            "fail",
            f"local directory {m.path} {what}",
            [
                "Point --model-id at a diffusers-format SVD directory (model_index.json, unet/, vae/, "
                "image_encoder/, feature_extractor/, scheduler/), or at a Hub id."
            ],
            details,
        )
    command = predownload_command(m.model, f.hub_cli)
    details["download_command"] = command
    login = "hf auth login" if f.hub_cli == "hf" else "huggingface-cli login"
    if m.present:
        summary = f"in the Hugging Face cache: {m.files} files, {gib(m.size_bytes)} ({m.path})"
        return _result("model", "pass", summary, [], details)
    partly = m.path is not None and len(m.missing) < 5
    where = f"in {m.cache_dir}" if m.cache_dir else "in the cache"
    summary = (
        f"{m.model} is only partly cached {where} (missing {', '.join(m.missing)})"
        if partly
        else f"{m.model} is not cached {where}"
    )
    if m.incomplete_downloads:
        summary += f"; {m.incomplete_downloads} interrupted download(s)"
    fix = (
        f"Pre-download it once (~{SVD_DOWNLOAD_BYTES / 1e9:.0f} GB): `{command}`. If the Hub refuses (401/403), "
        f"accept the model's licence on https://huggingface.co/{m.model} and run `{login}` first."
    )
    if offline:
        summary += "; HF_HUB_OFFLINE=1 forbids downloading it"
        return _result(
            "model", "fail", summary, [fix + " Or unset HF_HUB_OFFLINE so the run may download it."], details
        )
    summary += f"; the first run would download ~{SVD_DOWNLOAD_BYTES / 1e9:.0f} GB while every stage waits"
    return _result("model", "warn", summary, [fix], details)


# -- memory -----------------------------------------------------------------------------------


def check_memory(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    shape = p.job.latent_shape
    stages = memory.estimate_stages(p.model.model, ctx.dtype, shape, p.layout.nproc, ctx.device)
    details: dict[str, Any] = {
        "formula": "peak(stage) = overhead + weights(stage) + max(UNET_ACT*cfg*B*F*H*W*bytes, "
        "DECODE_ACT*B*F*H*W*bytes on the last stage, ENCODE_ACT*B*H*W*4 on the first) + 6*latent_bytes",
        "constants": {
            "UNET_ACT": memory.UNET_ACT,
            "DECODE_ACT": memory.DECODE_ACT,
            "ENCODE_ACT": memory.ENCODE_ACT,
            "cfg": memory.CFG,
            "overhead_bytes": stages[0].overhead_bytes if stages else None,
        },
        "device": ctx.device,
        "dtype": ctx.dtype,
        "latent_shape": list(shape),
        "model_family": ctx.family,
        "stages": [
            {
                "stage": s.stage,
                "weights_bytes": s.weights_bytes,
                "activation_bytes": s.activation_bytes,
                "activation_kind": s.activation_kind,
                "overhead_bytes": s.overhead_bytes,
                "total_bytes": s.total_bytes,
            }
            for s in stages
        ],
        "devices": [],
        "largest_fitting_shape": None,
        "decode_chunk_that_fits": None,
    }
    if ctx.device == "cuda":
        n = len(f.gpus)
        if n == 0:
            return _result("memory", "skip", "no GPU to compare against (see gpus)", [], details)
        used = f.gpus[: min(p.layout.nproc, n)]
        capacity = [g.free_bytes if g.free_bytes is not None else (g.total_bytes or 0) for g in used]
        labels = [f"cuda:{g.index}" for g in used]
        totals = [g.total_bytes for g in used]
    else:
        avail = f.host_available_bytes
        if avail is None:
            return _result("memory", "skip", "host memory unknown", [], details)
        capacity, labels, totals = [avail], ["cpu"], [f.host_total_bytes]
    need = memory.per_device_need(stages, len(capacity))
    rows, statuses = [], []
    for label, nb, cap, tot in zip(labels, need, capacity, totals, strict=True):
        status = "fail" if nb > cap else "warn" if nb > 0.9 * cap else "pass"
        statuses.append(status)
        rows.append({"device": label, "need_bytes": nb, "free_bytes": cap, "total_bytes": tot, "status": status})
    details["devices"] = rows
    worst = max(rows, key=lambda r: r["need_bytes"] / max(r["free_bytes"], 1))
    where = "per GPU" if ctx.device == "cuda" else "in host memory, all stages together"
    summary = (
        f"~{gib(max(need))} {where} at {ctx.dtype}, latent {shape_text(shape)}; "
        f"{worst['device']} has {gib(worst['free_bytes'])} free"
    )
    status = _worst(statuses)
    fixes = []
    if status != "pass":
        usable = [int(c * 0.9) for c in capacity]
        best = memory.largest_fitting_shape(p.model.model, ctx.dtype, shape, p.layout.nproc, ctx.device, usable)
        details["largest_fitting_shape"] = list(best) if best else None
        over = "will not fit" if status == "fail" else "is tight (over 90% of free memory)"
        summary = f"{summary}: {over}"
        if best:
            best_stages = memory.estimate_stages(p.model.model, ctx.dtype, best, p.layout.nproc, ctx.device)
            best_need = max(memory.per_device_need(best_stages, len(capacity)))
            fixes.append(f"Use --latent-shape {shape_text(best)} (the largest that fits, ~{gib(best_need)} {where}).")
        else:
            fixes.append(
                "Even the smallest latent does not fit: free the GPU memory other processes hold (nvidia-smi)."
            )
        last = stages[-1]
        if last.activation_kind == "decode" and ctx.family != "synthetic":
            chunk = memory.largest_decode_chunk(p.model.model, ctx.dtype, shape, p.layout.nproc, ctx.device, usable)
            details["decode_chunk_that_fits"] = chunk
            if chunk:
                fixes.append(
                    f"Or keep the shape and decode fewer frames at a time: --decode-chunk-size {chunk} "
                    "(the last stage's VAE decode of all frames at once is the peak; the video is the same)."
                )
        if ctx.device == "cuda" and any(
            g.free_bytes is not None and g.total_bytes and g.free_bytes < 0.8 * g.total_bytes for g in used
        ):
            fixes.append("Some GPUs are partly used by other processes: see nvidia-smi.")
        if ctx.dtype == "fp32":
            fixes.append(
                "--dtype fp16 (or bf16) halves weights and activations."
                if ctx.device == "cuda"
                else "--dtype bf16 halves weights and activations."
            )
        fixes.append("More stages do not help: every stage holds a whole UNet and one step's activations.")
    return _result("memory", status, summary, fixes, details)


# -- disk -------------------------------------------------------------------------------------


def output_bytes_estimate(config: RunConfig, vae_scale_factor: int | None = None) -> int:
    """Per run: fp32 latents + an mp4 (at most ~5% of the raw frames) per sample, plus the manifest.
    Pixels are latent cells times the model's VAE scale factor (SVD's 8 when it is not known yet)."""
    b, c, f, h, w = config.job.latent_shape
    scale = vae_scale_factor or pixels.SVD_FACTOR
    per_sample = b * c * f * h * w * 4 + b * f * (scale * h) * (scale * w) * 3 // 20
    return config.job.num_samples * per_sample + 1024 * 1024


def check_disk(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    out = f.output_disk
    need = output_bytes_estimate(p, f.model.vae_scale_factor if f.model is not None else None)
    details: dict[str, Any] = {"output": None, "cache": None}
    statuses, fixes, parts = ["pass"], [], []
    if out is not None:
        details["output"] = {
            "path": out.path,
            "existing": out.existing,
            "free_bytes": out.free_bytes,
            "total_bytes": out.total_bytes,
            "writable": out.writable,
            "estimated_bytes": need,
        }
        parts.append(
            f"outputs: {gib(out.free_bytes)} free at {out.existing}, a run of {p.job.num_samples} "
            f"sample{'s' if p.job.num_samples > 1 else ''} writes ~{need / 2**20:.0f} MiB"
        )
        if not out.writable:
            statuses.append("fail")
            parts.append(f"{out.existing} is not writable")
            fixes.append("Choose a writable --output-dir.")
        elif out.free_bytes is not None and out.free_bytes < need:
            statuses.append("fail")
            fixes.append(f"Free space at {out.existing} or choose another --output-dir.")
        elif out.free_bytes is not None and out.free_bytes < max(2 * need, GIB):
            statuses.append("warn")
            fixes.append(f"Little space left at {out.existing}: free some or choose another --output-dir.")
    m, cache = f.model, f.cache_disk
    if cache is not None:
        download = 0 if m is None or m.present else SVD_DOWNLOAD_BYTES
        details["cache"] = {
            "path": cache.path,
            "existing": cache.existing,
            "free_bytes": cache.free_bytes,
            "total_bytes": cache.total_bytes,
            "writable": cache.writable,
            "download_bytes": download,
        }
        if download:
            parts.append(f"HF cache: {gib(cache.free_bytes)} free for a ~{download / 1e9:.0f} GB download")
            if cache.free_bytes is not None and cache.free_bytes < download:
                statuses.append("fail" if not truthy(f.env.get("HF_HUB_OFFLINE")) else "warn")
                fixes.append(
                    "Not enough space for the model download: free space or point HF_HOME (or HF_HUB_CACHE) "
                    "at a larger disk."
                )
            elif not cache.writable:
                statuses.append("warn")
                fixes.append(f"{cache.existing} is not writable: point HF_HOME at a writable directory.")
    return _result("disk", _worst(statuses), "; ".join(parts) or "not probed", fixes, details)


# -- live transports --------------------------------------------------------------------------

TRANSPORT_FIXES = {
    "nccl": "For nccl: rerun with NCCL_DEBUG=INFO to see where init stops; without InfiniBand set "
    "NCCL_IB_DISABLE=1 (the benchmark guide's fix); try NCCL_P2P_DISABLE=1 once to see whether P2P is the cause; "
    "or plan --transport gloo.",
    "gloo": "For gloo: on one host set GLOO_SOCKET_IFNAME=lo; check that loopback TCP is not blocked; "
    "or plan --transport zmq.",
    "zmq-ipc": "For zmq over ipc: the socket files live in the temp directory (TMPDIR): it must be writable and "
    "local; or use --zmq-endpoint tcp.",
    "zmq-tcp": "For zmq over tcp: check that loopback TCP is not blocked (firewall); or use --zmq-endpoint ipc.",
}


def _link_json(link: LinkInfo, step_s: float | None, steps_per_stage: float) -> dict[str, Any]:
    share = None if link.latency_ms is None or not step_s else link.latency_ms / 1000 / step_s
    return {
        "label": link.label,
        "transport": link.transport,
        "endpoint": link.endpoint,
        "ok": link.ok,
        "latency_ms": link.latency_ms,
        "bandwidth_gbps": link.bandwidth_gbps,
        "share_of_step": share,
        "share_of_stage": None if share is None else share / max(steps_per_stage, 1e-9),
        "error": link.error,
        "elapsed_s": link.elapsed_s,
        "timeout_s": link.timeout_s,
        "attempts": link.attempts,
    }


def check_transport(ctx: Context) -> CheckResult:
    f, p = ctx.facts, ctx.config
    shape = LatentShape(*p.job.latent_shape)
    # A reference SVD step only means something for SVD-sized models (see memory.REF_STEP_S).
    step_s = memory.estimated_step_s(p.job.latent_shape) if ctx.family == "svd" else None
    steps_per_stage = p.job.total_steps / p.layout.nproc
    nbytes = memory.DTYPE_BYTES[ctx.dtype]
    details: dict[str, Any] = {
        "payload_shape": list(shape.handoff()),
        "payload_bytes": shape.numel * nbytes,
        "dtype": ctx.dtype,
        "estimated_step_s": step_s,
        "steps_per_stage": steps_per_stage,
        "planned": ctx.planned_link,
        "needed": p.layout.nproc > 1,
        "links": [],
        "skipped": [{"label": lab, "reason": why} for lab, why in f.live_skipped],
    }
    if f.live is None:
        if f.live_error:
            return _result(
                "transport",
                "warn",
                f"live check could not run: {f.live_error}",
                ["Run `ppsvd doctor` again after fixing that, or use --no-live."],
                details,
            )
        return _result("transport", "skip", "live check not run (--no-live)", [], details)
    links = [_link_json(link, step_s, steps_per_stage) for link in f.live]
    details["links"] = links
    parts, statuses, fixes = [], ["pass"], []
    for link, row in zip(f.live, links, strict=True):
        if link.ok and link.latency_ms is not None:
            share = row["share_of_step"]
            parts.append(
                f"{link.label} {link.latency_ms:.2f} ms" + (f" ({share:.2%} of a step)" if share is not None else "")
            )
        else:
            needed = link.label == ctx.planned_link and p.layout.nproc > 1
            statuses.append("fail" if needed else "warn")
            parts.append(f"{link.label} FAILED ({link.error or 'no result'})")
            fixes.append(TRANSPORT_FIXES.get(link.label, ""))
    size = details["payload_bytes"]
    reference = (
        f"; reference SVD step ~{step_s:.2f} s" if step_s else f"; no reference step for --model-id {p.model.model}"
    )
    summary = (
        f"{', '.join(parts)} per {size / 1024:.0f} KiB hop{reference}" if parts else "no transport could be tried here"
    )
    if f.live_skipped:
        summary += "; skipped " + ", ".join(f"{lab} ({why})" for lab, why in f.live_skipped)
    return _result("transport", _worst(statuses), summary, fixes, details)
