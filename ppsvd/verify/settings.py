"""What `ppsvd verify` runs when not told otherwise: short (few steps, a small shape, a few samples),
so a check takes seconds on CPU with the tiny model and about a minute per layout on a GPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ppsvd.api.options import resolve_latent_shape, resolve_total_steps
from ppsvd.config import DEFAULT_MODEL_ID, TINY_MODEL, RunConfig
from ppsvd.io.images import resolve_images
from ppsvd.models import pixels

VERIFY_STEPS = 6
"""Enough for 3 stages of 2 steps each, and for guidance to change the latents step after step."""
VERIFY_SAMPLES = 3
"""Three samples: a steady rate (the first result is left out) still has two intervals."""
VERIFY_TINY_SHAPE = (1, 4, 3, 8, 8)
"""tiny: 3 frames of 64x64 pixels."""
VERIFY_SHAPE = (1, 4, 4, 32, 32)
"""Real SVD weights (or --weights random): 4 frames of 256x256 pixels."""


def default_model(device: str) -> str:
    """tiny on CPU (a real SVD there takes minutes per step), the default SVD-XT on CUDA."""
    return TINY_MODEL if device == "cpu" else DEFAULT_MODEL_ID


def verify_config(
    *,
    model_id: str,
    device: str,
    images: Sequence[str] = (),
    latent_shape: Sequence[int] | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    total_steps: int | None = None,
    num_inference_steps: int | None = None,
    num_samples: int = VERIFY_SAMPLES,
    timeout: float = 600.0,
    output_dir: Path | None = None,
    **options,
) -> RunConfig:
    """The settings both sides run (model, size, steps, samples, conditioning), checked. A size not
    given is verify's short default; diffusers' names (num_frames, height, width) replace its parts
    (pixels are latent cells times the model's own VAE scale factor)."""
    weights = options.get("weights") or "pretrained"
    if latent_shape is None:
        _, _, f, h, w = VERIFY_TINY_SHAPE if model_id == TINY_MODEL else VERIFY_SHAPE
        factor = pixels.model_scale_factor(model_id, weights=weights)
        num_frames = num_frames or f
        height = height or h * factor
        width = width or w * factor
    shape = resolve_latent_shape(
        model_id, latent_shape, num_frames=num_frames, height=height, width=width, weights=weights
    )
    given = total_steps is not None or num_inference_steps is not None
    steps = resolve_total_steps(total_steps, num_inference_steps) if given else VERIFY_STEPS
    return RunConfig.from_options(
        model=model_id,
        device=device,
        images=resolve_images(list(images)) if images else (),
        latent_shape=shape,
        total_steps=steps,
        num_samples=num_samples,
        timeout_s=timeout,
        output_dir=output_dir or Path("ppsvd-verify"),
        **options,
    ).validate()
