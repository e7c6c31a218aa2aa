"""SVD architectures built in code from configs shipped in the package: no download, no hub.

Two families live under ppsvd/models/configs/:
- "tiny": a small SVD (diffusers' own test-sized UNet, a 4-level 32-channel VAE so that pixels are
  8x the latent like the real model, a 2-layer CLIP vision tower). A CPU runs a sample in seconds.
  `--model tiny` loads it through the same `from_pretrained` path a local model folder takes:
  `tiny_repo()` writes it once with `save_tiny` into ppsvd's cache folder and every stage loads it
  from there. That is what makes it bitwise diffusers' pipeline on the same weights:
  from_pretrained leaves the weights in the memory-mapped safetensors file, whose alignment
  differs from freshly allocated tensors', and CPU kernels then sum in another order (measured: a
  UNet call 1.1e-6 apart, bitwise the same once both are loaded alike).
- "svd-xt": the full-size SVD-XT architecture, for `--weights random` (timing a GPU without weights).

Weights are random but deterministic: each component is constructed right after
torch.manual_seed(seed), inside fork_rng so the caller's global RNG is left as it was. Every stage
of a run therefore builds bitwise the same UNet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ppsvd.models.shipped import TINY, config_dir

COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")


def build_components(
    family: str,
    names: Sequence[str] = COMPONENTS,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Construct the named components of `family` with seeded random weights, in fp32 on `device`.

    Building directly on a GPU avoids holding SVD-XT's ~9 GB of fp32 weights in host memory per
    stage; the values are then deterministic per device type (CUDA's generator is not the CPU's).
    """
    unknown = set(names) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")
    return {name: _build_one(family, name, seed, torch.device(device)) for name in names}


def build_tiny_components(names: Sequence[str] = COMPONENTS) -> dict[str, Any]:
    """The tiny SVD's components (all of them by default), on the CPU in fp32."""
    return build_components(TINY, names)


def save_tiny(path: str | Path) -> Path:
    """Write the tiny SVD as a full model repository (model_index.json + one folder per component).

    The result loads with StableVideoDiffusionPipeline.from_pretrained(path) and with ppsvd's
    `--model path`, exactly like a downloaded hub snapshot.
    """
    from diffusers import StableVideoDiffusionPipeline  # heavy: diffusers

    path = Path(path)
    pipe = StableVideoDiffusionPipeline(**build_tiny_components())
    pipe.save_pretrained(path, safe_serialization=True)
    _record_processor_class(path)
    return path


TINY_REPO_VERSION = 1
"""Part of the cache key of the materialised tiny repository: raise it when save_tiny's output changes."""
CACHE_ENV = "PPSVD_CACHE_DIR"
"""Where ppsvd keeps what it makes once (the tiny model's repository); default ~/.cache/ppsvd."""
_CHECKSUMS = "ppsvd-checksums.json"


def cache_dir() -> Path:
    """PPSVD_CACHE_DIR, else $XDG_CACHE_HOME/ppsvd, else ~/.cache/ppsvd."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppsvd"


def tiny_repo() -> Path:
    """The embedded tiny SVD as a model repository on disk (save_tiny's), made once and reused.

    Keyed by a hash of its shipped configs, TINY_REPO_VERSION and the versions of the libraries
    that construct its seeded weights; written into a temporary folder and renamed into place, so
    concurrent stages see either nothing or the whole repository. Each use checks the files'
    checksums; a damaged copy is rebuilt."""
    folder = cache_dir() / f"tiny-{_tiny_key()}"
    if _intact(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".tiny-building-", dir=folder.parent))
    try:
        _quietly(save_tiny, building)
        sums = {str(f.relative_to(building)): _sha256(f) for f in sorted(building.rglob("*")) if f.is_file()}
        (building / _CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
        if folder.exists() and not _intact(folder):  # damaged: set it aside, then put the new one in its place
            broken = Path(tempfile.mkdtemp(prefix=".tiny-broken-", dir=folder.parent))
            os.rename(folder, broken / "repo")
            shutil.rmtree(broken, ignore_errors=True)
        try:
            os.rename(building, folder)
        except OSError:
            if not _intact(folder):  # another process put a good one there first: use it; else a real error
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _tiny_key() -> str:
    digest = hashlib.sha256(f"tiny repository v{TINY_REPO_VERSION}".encode())
    for package in ("torch", "diffusers", "transformers"):  # they construct (and initialise) the weights
        digest.update(f"{package}=={metadata.version(package)}".encode())
    for name in COMPONENTS:
        with config_dir(TINY, name) as path:
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    digest.update(f"{name}/{file.name}".encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def _intact(folder: Path) -> bool:
    """Every file the checksums list is there with its content (a truncated or replaced one is not)."""
    try:
        sums = json.loads((folder / _CHECKSUMS).read_text())
        return bool(sums) and all(_sha256(folder / name) == digest for name, digest in sums.items())
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quietly(action, *args):
    """transformers' save_pretrained draws a progress bar and warns about its image processor's
    backend: nothing a user of the embedded model needs to see."""
    import transformers.utils.logging as transformers_logging  # heavy: transformers

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        return action(*args)
    finally:
        transformers_logging.enable_progress_bar()
        transformers_logging.set_verbosity(verbosity)


def _record_processor_class(path: Path) -> None:
    """Name the feature extractor 'CLIPImageProcessor' in model_index.json, as SVD-XT's repo does.

    transformers 5 hands out a backend-specific subclass (CLIPImageProcessorPil without
    torchvision) and save_pretrained records that subclass; the public name lets every loader pick
    its own backend, the same way for ppsvd and for the reference pipeline.
    """
    index_path = path / "model_index.json"
    index = json.loads(index_path.read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _build_one(family: str, name: str, seed: int, device: torch.device) -> Any:
    with config_dir(family, name) as path:
        if name == "scheduler":
            from diffusers import EulerDiscreteScheduler  # heavy: diffusers

            return EulerDiscreteScheduler.from_pretrained(str(path))
        if name == "feature_extractor":
            from transformers import CLIPImageProcessor  # heavy: transformers

            return CLIPImageProcessor.from_pretrained(str(path))
        with _seeded(seed, device), device:
            return _construct(name, path).eval()


def _construct(name: str, path: Path) -> torch.nn.Module:
    if name == "unet":
        from diffusers import UNetSpatioTemporalConditionModel  # heavy: diffusers

        return UNetSpatioTemporalConditionModel.from_config(UNetSpatioTemporalConditionModel.load_config(str(path)))
    if name == "vae":
        from diffusers import AutoencoderKLTemporalDecoder  # heavy: diffusers

        return AutoencoderKLTemporalDecoder.from_config(AutoencoderKLTemporalDecoder.load_config(str(path)))
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # heavy: transformers

    return CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(str(path)))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch.manual_seed(seed) for the block, restoring the caller's RNG state afterwards."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield
