"""The model configs shipped in the package (ppsvd/models/configs/<family>/<component>/): the
embedded tiny SVD's and SVD-XT's. Reading them needs neither torch nor diffusers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

TINY = "tiny"
SVD_XT = "svd-xt"

# The scheduler is SVD-XT's for every family: it holds no weights, and the tiny model should
# step through exactly the sigmas the real one does.
_SCHEDULER_FAMILY = SVD_XT


@contextlib.contextmanager
def config_dir(family: str, component: str) -> Iterator[Path]:
    """The shipped config folder of one component, as a real path."""
    family_dir = _SCHEDULER_FAMILY if component == "scheduler" else family
    ref = resources.files("ppsvd.models").joinpath(f"configs/{family_dir}/{component}")
    with resources.as_file(ref) as path:
        yield Path(path)


def load_config(family: str, component: str) -> dict[str, Any]:
    """A shipped config as a dict (cheap: no torch model is built). Used by preflight."""
    name = "preprocessor_config.json" if component == "feature_extractor" else "config.json"
    if component == "scheduler":
        name = "scheduler_config.json"
    with config_dir(family, component) as path:
        return json.loads((path / name).read_text())
