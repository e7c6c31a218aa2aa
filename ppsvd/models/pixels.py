"""Pixel sizes against latent sizes: the model's own VAE scale factor, and the checks and
messages that follow from it.

diffusers' pipelines compute the factor from the VAE's config, 2 ** (len(block_out_channels) - 1)
(8 for SVD's four-level VAE, 2 for a two-level one such as diffusers' own SVD test components),
and 8 when a pipeline has no VAE; a pixel size is the latent size times the factor. Separately,
StableVideoDiffusionPipeline.check_inputs wants height and width divisible by 8. So --height and
--width must be multiples of both: lcm(8, factor). Everything here reads only small JSON files
(the shipped configs, a local folder, the Hugging Face cache): no torch, no diffusers. Used by
the API's option resolution, the run's preflight, doctor and the service.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppsvd.config import SYNTHETIC_MODEL, TINY_MODEL
from ppsvd.errors import ConfigError
from ppsvd.models import hub, shipped

DIFFUSERS_MULTIPLE = 8
"""StableVideoDiffusionPipeline.check_inputs: height and width must be divisible by 8."""
NO_VAE_FACTOR = 8
"""diffusers' factor for a pipeline without a VAE (the synthetic stand-in has none)."""
SVD_FACTOR = 8
"""SVD's four-level VAE: what a model is taken to have while its VAE config is not on disk."""


def vae_scale_factor(vae_config: Mapping[str, Any] | None) -> int:
    """Pixels per latent cell of a VAE with this config, as diffusers' pipelines compute it."""
    if vae_config is None:
        return NO_VAE_FACTOR
    # A config without the key gets the class default, as diffusers would build it: (64,).
    return 2 ** (len(vae_config.get("block_out_channels", (64,))) - 1)


def model_vae_config(
    model: str,
    *,
    weights: str = "pretrained",
    revision: str | None = None,
    fetch: bool = True,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The VAE config of the model a run loads: the shipped one (tiny, --weights random), the
    local folder's, or the hub cache's (fetched when absent and `fetch` and not offline). None
    for the synthetic model (no VAE) and when it cannot be read (the run's preflight then says
    why, in one line)."""
    if model == SYNTHETIC_MODEL:
        return None
    if model == TINY_MODEL:
        return shipped.load_config(shipped.TINY, "vae")
    if weights == "random":
        return shipped.load_config(shipped.SVD_XT, "vae")
    where = hub.locate(model)
    relpath = hub.CONFIG_FILES["vae"]
    path = hub.find(model, where, relpath, revision=revision, env=env)
    if path is None and where == "hub" and fetch and not hub.hub_offline(env):
        from huggingface_hub import hf_hub_download  # only when a config must come from the Hub

        try:
            path = hf_hub_download(model, relpath, cache_dir=hub.hub_cache_dir(env), revision=revision)
        except Exception:  # a wrong id, no network, a gated repo: the preflight reports it in one line
            path = None
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def model_scale_factor(model: str, **where: Any) -> int:
    """The VAE scale factor of a model (model_vae_config's arguments); SVD's when its config
    cannot be read yet (the run's preflight then refuses the model in one line)."""
    if model == SYNTHETIC_MODEL:
        return NO_VAE_FACTOR
    config = model_vae_config(model, **where)
    return vae_scale_factor(config) if config is not None else SVD_FACTOR


def pixel_multiple(factor: int) -> int:
    """What --height and --width must be multiples of: the factor and diffusers' 8 both."""
    return math.lcm(DIFFUSERS_MULTIPLE, factor)


def latent_cells(flag: str, pixels: int, factor: int, model: str) -> int:
    """--height/--width in pixels -> latent cells; ConfigError (one line) with the nearest sizes
    that work when the size is not a multiple of pixel_multiple(factor)."""
    step = pixel_multiple(factor)
    if pixels % step:
        lower, upper = pixels // step * step, (pixels // step + 1) * step
        suggestion = f"{flag} {upper}" if lower == 0 else f"{flag} {lower} or {upper}"
        raise ConfigError(
            f"{flag} {pixels} is not divisible by {step} (the VAE scale factor of {model} is {factor}; "
            f"diffusers requires multiples of {DIFFUSERS_MULTIPLE}); use {suggestion}"
        )
    return pixels // factor


def latent_shape_refusal(shape: tuple[int, ...], factor: int, model: str) -> str | None:
    """None when --latent-shape's H and W give pixel sizes diffusers accepts; else the one line."""
    _, _, _, h, w = shape
    height, width = h * factor, w * factor
    if not (height % DIFFUSERS_MULTIPLE or width % DIFFUSERS_MULTIPLE):
        return None
    step = DIFFUSERS_MULTIPLE // math.gcd(DIFFUSERS_MULTIPLE, factor)
    return (
        f"--latent-shape {' '.join(map(str, shape))}: H={h} W={w} give {height}x{width} pixels (the VAE scale factor "
        f"of {model} is {factor}), but diffusers requires multiples of {DIFFUSERS_MULTIPLE}; "
        f"use H and W that are multiples of {step}"
    )
