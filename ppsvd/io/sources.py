"""What a run reads, recorded so that it can be reproduced from anywhere, and checked again.

Before the first launch every input image is named by an absolute path (or its URL) and the
digest of its bytes is recorded in the config (JobSection.image_digests, so config.json has
both). The same function runs again before a resume: an image whose bytes changed since is
refused by name (one line, exit code 2), and stage 0 checks each image's digest once more as it
reads it, so a run never mixes samples of two versions of an image.
"""

from __future__ import annotations

import dataclasses
import os

from ppsvd.config import RunConfig
from ppsvd.errors import InputImageError
from ppsvd.io.images import BUILTIN_IMAGE, check_image, is_url, with_images_resolved
from ppsvd.io.samples import plan_samples


def record_sources(config: RunConfig) -> RunConfig:
    """config with absolute image paths and the digest of every image a sample uses; an image
    whose digest differs from the one config already records is refused (InputImageError)."""
    if config.model.is_synthetic:  # the stand-in reads no image
        return config
    config = _absolute(with_images_resolved(config))
    recorded = config.job.image_digests
    digests = {}
    for image, what in used_images(config).items():
        digest = check_image(image, what)
        before = recorded.get(image)
        if before is not None and before != digest:
            raise InputImageError(
                f"{what}: the image changed since this run recorded it ({before[:19]}..., now {digest[:19]}...); "
                "put the original back, or start a new run"
            )
        digests[image] = digest
    return config.replace(image_digests=digests)


def used_images(config: RunConfig) -> dict[str, str]:
    """Every image a sample uses, in order of first use -> how messages name it: '--image PATH',
    or '--inputs entry K (PATH)' for a job file's entry."""
    entry = {}
    for k, item in enumerate(config.job.inputs):
        entry.setdefault(item.image, f"--inputs entry {k + 1} ({item.image})")
    used = {}
    for spec in plan_samples(config):
        if spec.image != BUILTIN_IMAGE and spec.image not in used:
            used[spec.image] = entry.get(spec.image, f"--image {spec.image}")
    return used


def _absolute(config: RunConfig) -> RunConfig:
    """Image paths made absolute against the current directory (URLs kept): a later resume from
    another directory reads the same files."""

    def absolute(image: str) -> str:
        return image if is_url(image) or image == BUILTIN_IMAGE else os.path.abspath(os.path.expanduser(image))

    return config.replace(
        images=tuple(absolute(image) for image in config.job.images),
        inputs=tuple(dataclasses.replace(item, image=absolute(item.image)) for item in config.job.inputs),
    )
