"""What software and machine produced a run: recorded in config.json and the manifest.

Versions come from the installed distributions (importlib.metadata, no import of diffusers or
transformers); torch's CUDA version from torch itself, the driver from NVML when a GPU is there.
Every lookup is best effort: a missing piece is recorded as None, never an error.
"""

from __future__ import annotations

import platform
import socket
from importlib import metadata
from typing import Any

from ppsvd import __version__

_DISTRIBUTIONS = ("diffusers", "transformers", "huggingface_hub", "safetensors", "pyzmq")


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
        import torch

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
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None
