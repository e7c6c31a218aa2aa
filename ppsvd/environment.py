"""Where this process runs: the torchrun world it belongs to (if any), and what software and
machine produced a run (recorded in config.json and the manifest).

Versions come from the installed distributions (importlib.metadata, no import of diffusers or
transformers); torch's CUDA version from torch itself, the driver from NVML when a GPU is there.
Every lookup is best effort: a missing piece is recorded as None, never an error.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ppsvd import __version__
from ppsvd.errors import ConfigError

_DISTRIBUTIONS = ("diffusers", "transformers", "huggingface_hub", "safetensors", "pyzmq")


TORCHRUN_REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What a torchrun worker needs to join its world (torch.distributed's env:// rendezvous)."""
TORCHRUN_MARKERS = (*TORCHRUN_REQUIRED, "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def env_world() -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) when running under torchrun, else None.

    Some but not all of torchrun's variables (a stray RANK=0 exported in a shell) is neither a
    torchrun world nor a plain run: ConfigError naming what is there and what is missing."""
    present = [name for name in TORCHRUN_MARKERS if name in os.environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_REQUIRED if name not in os.environ]
    if missing:
        shown = " ".join(f"{name}={os.environ[name]}" for name in present)
        raise ConfigError(
            f"partial torchrun environment: {shown} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; "
            f"unset {' '.join(present)} to run on this host, or start the command with torchrun"
        )
    try:
        return _env_world_values()
    except ValueError:
        shown = " ".join(f"{name}={os.environ[name]}" for name in present)
        raise ConfigError(
            f"torchrun environment with a non-integer value ({shown}); start the command with torchrun"
        ) from None


def _env_world_values() -> tuple[int, int, int, int]:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


def software_versions() -> dict[str, Any]:
    """ppsvd, Python, torch, CUDA (torch's build), the NVIDIA driver, diffusers, transformers, ... and the host."""
    facts: dict[str, Any] = {
        "ppsvd": __version__,
        "python": platform.python_version(),
        "torch": _distribution("torch"),
        "cuda": None,
        "driver": None,
    }
    for name in _DISTRIBUTIONS:
        facts[name] = _distribution(name)
    try:
        import torch  # heavy: torch

        facts["torch"] = torch.__version__
        facts["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            facts["driver"] = _driver_version()
    except Exception:  # informative only: a broken torch shows up elsewhere, in one line
        pass
    facts["host"] = socket.gethostname()
    facts["platform"] = platform.platform()
    return facts


def _distribution(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:
        import pynvml  # inside the try: a failed import counts as no NVML, like a failed init

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def version_floors(distribution: str = "ppsvd") -> dict[str, tuple[int, ...]]:
    """The lowest versions the installed `distribution` accepts, from its own metadata (what
    pyproject.toml declared when it was installed): 'python' from Requires-Python, and each
    requirement's name (as written there) with its `>=` bound; optional extras are left out.
    Empty when the distribution is not installed."""
    try:
        requires_python = metadata.metadata(distribution).get("Requires-Python") or ""
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return {}
    floors = {}
    python = _floor(SpecifierSet(requires_python))
    if python:
        floors["python"] = python
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement (e.g. the tests')
        floor = _floor(requirement.specifier)
        if floor:
            floors[requirement.name] = floor
    return floors


def _floor(specifiers: SpecifierSet) -> tuple[int, ...]:
    """The highest `>=` bound among the specifiers, as a release tuple; () when there is none."""
    bounds = [Version(spec.version).release for spec in specifiers if spec.operator == ">="]
    return max(bounds) if bounds else ()
