"""`ppsvd doctor`: find what would make a planned run fail or crawl, in seconds, before the run.

    probe.py   gathers facts (NVML, torch, environment, HF cache, disks): the side effects
    live.py    the live transport check (ppsvd.backends.linkcheck) with a hard deadline
    checks.py  pure: Facts + RunConfig -> [CheckResult]   (tests feed fake facts)
    memory.py  pure: the memory model and the largest latent shape that fits
    render.py  Rich table / JSON

Importing this package imports neither torch nor NVML.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ppsvd import __version__
from ppsvd.config import RunConfig
from ppsvd.doctor import probe
from ppsvd.doctor.checks import context, exit_code, run_checks
from ppsvd.doctor.facts import CheckResult, Facts
from ppsvd.doctor.live import run_live

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = (
    "schema_version",
    "ppsvd_version",
    "ok",
    "exit_code",
    "planned",
    "machine",
    "counts",
    "checks",
    "probe_errors",
    "elapsed_s",
)
CHECK_KEYS = ("name", "status", "summary", "fix", "details")


@dataclass
class Report:
    config: RunConfig
    """The run as asked (device None: not given); device, dtype and transport below are what it resolves to here."""
    facts: Facts
    checks: list[CheckResult]
    device: str
    dtype: str
    transport: str
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        return exit_code(self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "warn", "fail", "skip")}

    def to_json(self) -> dict[str, Any]:
        p, f = self.config, self.facts
        return {
            "schema_version": SCHEMA_VERSION,
            "ppsvd_version": __version__,
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "planned": {
                "model": p.model.model,
                "nproc": p.layout.nproc,
                "latent_shape": list(p.job.latent_shape),
                "dtype": self.dtype,
                "device": self.device,
                "transport": self.transport,
                "total_steps": p.job.total_steps,
                "num_samples": p.job.num_samples,
                "output_dir": str(p.output.output_dir),
            },
            "machine": {
                "python": f.python,
                "platform": f.platform,
                "cpu_count": f.cpu_count,
                "host_total_bytes": f.host_total_bytes,
                "host_available_bytes": f.host_available_bytes,
                "gpu_count": len(f.gpus),
                "gpu_source": f.gpu_source,
            },
            "counts": self.counts(),
            "checks": [c.to_json() for c in self.checks],
            "probe_errors": list(f.probe_errors),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def diagnose(
    config: RunConfig,
    *,
    live: bool = True,
    live_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    nvml: Any = None,
    torch_module: Any = None,
    check_link: Callable[..., Any] | None = None,
    hang: tuple[str, ...] = (),
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Probe this machine, optionally run the live transport check, and check the planned run.

    config is the run as `ppsvd run` would get it, except that device may be None (not given):
    it resolves here, as run resolves it, once the probe knows whether torch can use a GPU.
    """

    start = time.monotonic()
    if on_progress:
        on_progress("probing versions, GPUs, environment, model cache, disks")
    facts = probe.gather(config, env=env, nvml=nvml, torch_module=torch_module)
    ctx = context(facts, config)
    if live:
        run_live(
            facts,
            config,
            ctx.dtype,
            timeout_s=live_timeout,
            check_link=check_link,
            hang=hang,
            on_start=(lambda label: on_progress(f"live transport check: {label}")) if on_progress else None,
        )
    return report_for(facts, config, elapsed_s=time.monotonic() - start)


def report_for(facts: Facts, config: RunConfig, *, elapsed_s: float = 0.0) -> Report:
    """The report for already-gathered facts (pure: what tests call with fake facts)."""
    ctx = context(facts, config)
    return Report(
        config=config,
        facts=facts,
        checks=run_checks(facts, config),
        device=ctx.device,
        dtype=ctx.dtype,
        transport=ctx.transport,
        elapsed_s=elapsed_s,
    )


__all__ = ["CHECK_KEYS", "SCHEMA_VERSION", "TOP_LEVEL_KEYS", "Report", "diagnose", "report_for"]
