"""Images the Python API is handed as objects (`ppsvd.run(Image.open("cat.png"))`, as diffusers'
pipeline takes them): written to files, so that every run reads files, its config.json and
manifest name them, and --resume finds them again.

Each image is saved losslessly (PNG) into a private staging folder under a stable name: the stem
of the file it was opened from (Image.open records it: `cat`, so the outputs are `cat-s<seed>`,
as if the path had been given), else `image-1`, `image-2`, ... by position. Once the run has its
directory, the launcher moves them into RUN_DIR/inputs/ and the config names those copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ppsvd.config import RunConfig

INPUTS_DIR = "inputs"
"""The folder of a run directory that holds the images it was handed as objects."""
STAGING_PREFIX = "ppsvd-given-"
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


def is_image_object(value: Any) -> bool:
    return isinstance(value, Image.Image)


@contextlib.contextmanager
def staged(images: Iterable[Any]) -> Iterator[list[Any]]:
    """images with every PIL image replaced by the path of its PNG in a private staging folder
    (paths, URLs and globs pass through); the folder is removed afterwards (the run has its copies)."""
    items = list(images)
    if not any(is_image_object(item) for item in items):
        yield items
        return
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))  # 0700
    try:
        taken: set[str] = set()
        unnamed = 0
        paths = []
        for item in items:
            if not is_image_object(item):
                paths.append(item)
                continue
            stem = _stem(item)
            if stem is None:
                unnamed += 1
                stem = f"image-{unnamed}"
            name, k = stem, 1
            while name in taken:
                k += 1
                name = f"{stem}-{k}"
            taken.add(name)
            path = folder / f"{name}.png"
            image = item if item.mode in _PNG_MODES else item.convert("RGB")
            image.save(path, format="PNG")
            paths.append(str(path))
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def adopt(config: RunConfig, run_dir: Path, *, copy: bool = True) -> RunConfig:
    """config with every staged image moved to RUN_DIR/inputs/<name> (copy False: only renamed,
    another process of the run copies them), and their recorded digests kept under the new names."""
    moved: dict[str, str] = {}
    for image in (*config.job.images, *(item.image for item in config.job.inputs)):
        if _is_staged(image) and image not in moved:
            moved[image] = str(Path(run_dir) / INPUTS_DIR / Path(image).name)
    if not moved:
        return config
    if copy:
        (Path(run_dir) / INPUTS_DIR).mkdir(exist_ok=True)
        for source, target in moved.items():
            shutil.copyfile(source, target)
    return config.replace(
        images=tuple(moved.get(image, image) for image in config.job.images),
        inputs=tuple(dataclasses.replace(item, image=moved.get(item.image, item.image)) for item in config.job.inputs),
        image_digests={moved.get(path, path): digest for path, digest in config.job.image_digests.items()},
    )


def _is_staged(image: str) -> bool:
    return Path(image).parent.name.startswith(STAGING_PREFIX) and Path(image).parent.parent == Path(
        tempfile.gettempdir()
    )


def _stem(image: Image.Image) -> str | None:
    """The stem of the file an image was opened from, made safe as a file name; None if none."""
    filename = getattr(image, "filename", "") or ""
    stem = re.sub(r"[^\w.-]+", "_", Path(os.fspath(filename)).stem).lstrip(".-") if filename else ""
    return stem or None
