"""SVD architectures built in code from configs shipped in the package: no download, no hub.

Two families live under ppsvd/models/configs/:
- "tiny": a small SVD (diffusers' own test-sized UNet, a 4-level 32-channel VAE so that pixels are
  8x the latent like the real model, a 2-layer CLIP vision tower). A CPU runs a sample in seconds.
  `--model tiny` uses it, and the tests save it with `save_tiny` and load it back through the same
  `from_pretrained` path a hub id takes.
- "svd-xt": the full-size SVD-XT architecture, for `--weights random` (timing a GPU without weights).

Weights are random but deterministic: each component is constructed right after
torch.manual_seed(seed), inside fork_rng so the caller's global RNG is left as it was. Every stage
of a run therefore builds bitwise the same UNet.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
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
