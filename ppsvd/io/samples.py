"""Which samples a run makes: each one's image, seed, conditioning and output name.

Pure and the same in every process (stage 0 builds its samples from it, the launcher names the
ones it skips), fixed before any worker starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ppsvd.config import RunConfig, SampleInput, SvdSection
from ppsvd.io.images import BUILTIN_IMAGE, is_url


@dataclass(frozen=True)
class SampleSpec:
    """Everything that differs between samples of one run, fixed before any worker starts."""

    index: int
    image: str
    """An image file, an http(s) URL, or BUILTIN_IMAGE (ppsvd.io.images)."""
    seed: int
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    name: str
    """Output file stem, unique in the run: '<image stem>-s<seed>' (then '-2', '-3' on repeats;
    'sample_NNNNN' for the synthetic model, which reads no image). A service's job: its id."""
    min_guidance_scale: float | None = None
    max_guidance_scale: float | None = None
    """A service's job may set its own guidance scales; None: the run's (--min/--max-guidance-scale)."""
    job: str | None = None
    """The service's job id this sample is (ppsvd serve); None in a run."""

    def guidance(self, svd: SvdSection) -> SvdSection:
        """The run's SVD settings with this sample's own guidance scales, where it has them."""
        changes = {
            name: value
            for name, value in (
                ("min_guidance_scale", self.min_guidance_scale),
                ("max_guidance_scale", self.max_guidance_scale),
            )
            if value is not None
        }
        return dataclasses.replace(svd, **changes) if changes else svd

    def conditioning(self) -> dict[str, Any]:
        """The per-sample facts that travel with the sample and land in the manifest."""
        facts = {
            "seed": self.seed,
            "image": self.image,
            "fps": self.fps,
            "motion_bucket_id": self.motion_bucket_id,
            "noise_aug_strength": self.noise_aug_strength,
            "name": self.name,
        }
        for name in ("min_guidance_scale", "max_guidance_scale", "job"):
            if getattr(self, name) is not None:
                facts[name] = getattr(self, name)
        return facts


def plan_samples(config: RunConfig) -> tuple[SampleSpec, ...]:
    """Sample i: input i mod count (or the built-in image), seed + i unless its input sets a seed,
    the run's conditioning unless its input sets its own, and a unique output name."""
    specs, used = [], set()
    for index in range(config.job.num_samples):
        item = config.job.inputs[index % len(config.job.inputs)] if config.job.inputs else None
        if item is not None:
            image = item.image
        else:
            image = config.job.images[index % len(config.job.images)] if config.job.images else BUILTIN_IMAGE
        seed = config.job.seed + index if item is None or item.seed is None else item.seed
        # The synthetic stand-in reads no image: its outputs are named by index.
        base = f"sample_{index:05d}" if config.model.is_synthetic else f"{image_stem(image)}-s{seed}"
        name, k = base, 1
        while name in used:  # the same stem and seed twice: -2, -3, ... in sample order
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        specs.append(
            SampleSpec(
                index=index,
                image=image,
                seed=seed,
                fps=_pick(item, "fps", config.svd.fps),
                motion_bucket_id=_pick(item, "motion_bucket_id", config.svd.motion_bucket_id),
                noise_aug_strength=_pick(item, "noise_aug_strength", config.svd.noise_aug_strength),
                name=name,
            )
        )
    return tuple(specs)


def sample_spec(config: RunConfig, index: int) -> SampleSpec:
    """The spec of sample `index`, also past num_samples (what a longer run would give it)."""
    return plan_samples(config if index < config.job.num_samples else config.replace(num_samples=index + 1))[index]


def skipped_images(config: RunConfig) -> tuple[str, ...]:
    """Input images no sample uses, because --num-samples is smaller than their number."""
    return config.job.input_images[config.job.num_samples :]


def _pick(item: SampleInput | None, name: str, default: Any) -> Any:
    value = None if item is None else getattr(item, name)
    return default if value is None else value


def image_stem(image: str) -> str:
    """A file-name-safe stem of an image path or URL: 'inputs/cat.png' -> 'cat',
    'https://host/a/dog.jpg?x=1' -> 'dog'."""
    if is_url(image):
        image = image.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    name = image.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or "image"
