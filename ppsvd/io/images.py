"""Input images: which files (--image), how they are read, and the built-in test image.

Sample i is conditioned on image i mod count. Each image is converted to RGB and resized to the
run's pixel size here, once, deterministically (bicubic, what `image.resize((width, height))` does
in diffusers' SVD example); diffusers' preprocessing then sees an image that already has the
target size, so ppsvd and a reference StableVideoDiffusionPipeline given the same PIL image get
bitwise the same input.

Files need only PIL and numpy: the launcher checks images before any worker starts, and must stay
fast. An http(s) URL is fetched with diffusers' own load_image (imported only then).
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ppsvd.config import RunConfig
from ppsvd.errors import InputImageError

BUILTIN_IMAGE = "builtin"
"""The image of a sample without --image (the built-in test image), as the manifest records it."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Files a directory contributes (globs and explicit files are taken as given, then checked)."""

_HINT = "pass an image file (PNG, JPEG, WebP, ...), a directory of images or a quoted glob like 'inputs/*.png'"


def resolve_images(spec: Iterable[str]) -> tuple[str, ...]:
    """Expand --image values into image files, in order.

    Each value is a file (taken as is), an http(s) URL (taken as is, fetched when used), a
    directory (its image files, sorted by name, not recursive) or a glob (its matches, sorted).
    A value that matches nothing is an error.
    """
    files: list[str] = []
    for item in spec:
        files.extend(_expand(str(item)))
    return tuple(files)


def with_images_resolved(config: RunConfig) -> RunConfig:
    """config with its --image values expanded to files and URLs (a no-op when they already are)."""
    return config.replace(images=resolve_images(config.job.images)) if config.job.images else config


def is_url(image: str) -> bool:
    """An image given as an http(s) URL (fetched with diffusers.utils.load_image)."""
    return image.startswith(("http://", "https://"))


def _expand(item: str) -> list[str]:
    if is_url(item):
        return [item]
    path = Path(item).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputImageError(
                f"--image {item}: directory has no image files ({', '.join(IMAGE_SUFFIXES)}); {_HINT}"
            )
        return found
    if glob.has_magic(item):
        found = sorted(p for p in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(p))
        if not found:
            raise InputImageError(f"--image {item}: the glob matches no file; {_HINT}")
        return found
    raise InputImageError(f"--image {item}: no such file or directory; {_HINT}")


def check_image(path: str) -> None:
    """Raise InputImageError (one line) unless `path` is a readable image. Decodes it fully."""
    _open_rgb(path)


def load_image(path: str, width: int, height: int) -> Image.Image:
    """The image at `path` as RGB, EXIF-rotated like diffusers.utils.load_image, at width x height."""
    return _fit(_open_rgb(path), width, height)


def load_sample_image(name: str, width: int, height: int) -> Image.Image:
    """load_image, or the built-in image when name is BUILTIN."""
    return builtin_image(width, height) if name == BUILTIN_IMAGE else load_image(name, width, height)


def builtin_image(width: int, height: int) -> Image.Image:
    """A deterministic test image, so every command runs without --image.

    A smooth diagonal colour gradient (red grows to the right, green downwards, blue against
    both) with a light disc in the upper left and a dark square in the lower right: soft areas
    and hard edges, a pure function of (width, height). Shapes scale with the size.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    x = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None]
    red = np.broadcast_to(x, (height, width))
    green = np.broadcast_to(y, (height, width))
    blue = 1.0 - (red + green) / 2.0
    pixels = np.rint(np.stack([red, green, blue], axis=-1) * 255.0).astype(np.uint8)
    image = Image.fromarray(pixels)  # uint8 [H, W, 3] is RGB
    draw = ImageDraw.Draw(image)
    draw.ellipse(_box(width, height, 0.15, 0.15, 0.45, 0.45), fill=(240, 235, 210))
    draw.rectangle(_box(width, height, 0.6, 0.6, 0.85, 0.85), fill=(30, 40, 60))
    return image


def _box(width: int, height: int, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))


def _open_rgb(path: str) -> Image.Image:
    if is_url(path):
        return _fetch_url(path).copy()
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise InputImageError(f"--image {path}: no such file; {_HINT}") from None
    except IsADirectoryError:
        raise InputImageError(f"--image {path}: is a directory where a file was expected; {_HINT}") from None
    except UnidentifiedImageError:
        raise InputImageError(f"--image {path}: not an image PIL can read; {_HINT}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(f"--image {path}: unreadable image ({reason}); {_HINT}") from None


@functools.lru_cache(maxsize=16)
def _fetch_url(url: str) -> Image.Image:
    """An image URL through diffusers.utils.load_image (RGB, EXIF-rotated; its request has a finite
    timeout, DIFFUSERS_REQUEST_TIMEOUT, 60 s by default). Cached: samples cycle over their images."""
    from diffusers.utils import load_image as diffusers_load_image  # heavy: diffusers

    try:
        image = diffusers_load_image(url)
        image.load()
        return image
    except UnidentifiedImageError:
        raise InputImageError(f"--image {url}: the server did not send an image PIL can read; check the URL") from None
    except Exception as exc:  # requests' errors (refused, timeout, DNS) and truncated downloads alike
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputImageError(
            f"--image {url}: could not fetch the image ({reason}); check the URL, or download it and pass the file"
        ) from None


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to exactly width x height (bicubic, like diffusers' default resample), keeping a copy
    when the size already matches."""
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), resample=Image.Resampling.BICUBIC)
