"""ppsvd: pipeline-parallel Stable Video Diffusion.

    import ppsvd
    result = ppsvd.run(["cat.png"], model_id="tiny", device="cpu", nproc=2)

The API (ppsvd.api) is imported on first use: importing ppsvd must stay cheap, no torch, no
diffusers here.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": "ppsvd.api",
    "simulate": "ppsvd.api",
    "benchmark": "ppsvd.api",
    "RunResult": "ppsvd.api",
    "SampleOutput": "ppsvd.api",
    "SampleInput": "ppsvd.config",
    "RunConfig": "ppsvd.config",
    "PpsvdError": "ppsvd.errors",
    "ConfigError": "ppsvd.errors",
    "StageFailedError": "ppsvd.errors",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppsvd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
