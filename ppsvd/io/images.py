"""Input images: which files (--image), how they are read, and the built-in test image.

Sample i is conditioned on image i mod count. Each image is converted to RGB and resized to the
run's pixel size here, once, deterministically (bicubic, what `image.resize((width, height))` does
in diffusers' SVD example); diffusers' preprocessing then sees an image that already has the
target size, so ppsvd and a reference StableVideoDiffusionPipeline given the same PIL image get
bitwise the same input.

Files need only PIL and numpy: the launcher checks images before any worker starts, and must stay
fast. An http(s) URL is fetched with requests, bounded in time and size (ppsvd.io.fetch), and
decoded like diffusers.utils.load_image does (PIL open, EXIF transpose, RGB). Only regular files
are read (a FIFO would block), every image at most IMAGE_MAX_BYTES and Image.MAX_IMAGE_PIXELS.
"""

from __future__ import annotations

import functools
import glob
import io
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ppsvd.config import RunConfig
from ppsvd.errors import InputImageError
from ppsvd.io.fetch import fetch_bytes
from ppsvd.io.integrity import digest_bytes

BUILTIN_IMAGE = "builtin"
"""The image of a sample without --image (the built-in test image), as the manifest records it."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Files a directory contributes (globs and explicit files are taken as given, then checked)."""

IMAGE_MAX_BYTES = 512 * 2**20
"""Largest image file read: more than any image within PIL's pixel limit takes, far below memory."""

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
    """An image given as an http(s) URL (fetched by ppsvd.io.fetch)."""
    return image.startswith(("http://", "https://"))


def _expand(item: str) -> list[str]:
    """One --image value as image files (absolute paths: a run must not depend on the directory it
    is resumed from) or URLs."""
    if is_url(item):
        return [item]
    path = Path(item).expanduser()
    if path.is_file():
        return [os.path.abspath(path)]
    if path.is_dir():
        found = sorted(os.path.abspath(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputImageError(
                f"--image {item}: directory has no image files ({', '.join(IMAGE_SUFFIXES)}); {_HINT}"
            )
        return found
    if path.exists():
        raise InputImageError(f"--image {item}: is {_kind(path.stat().st_mode)}, not a regular file; {_HINT}")
    if glob.has_magic(item):
        found = sorted(
            os.path.abspath(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(p)
        )
        if not found:
            raise InputImageError(f"--image {item}: the glob matches no file; {_HINT}")
        return found
    raise InputImageError(f"--image {item}: no such file or directory; {_HINT}")


def check_image(path: str, what: str | None = None) -> str:
    """Raise InputImageError (one line) unless `path` is a readable image; decodes it fully (and
    keeps nothing). Returns the digest of its bytes ('sha256:<hex>'). `what` names it in errors
    (default '--image PATH')."""
    data = read_image_bytes(path, what)
    _decode(data, what or f"--image {path}", is_url(path))
    return digest_bytes(data)


def load_image(path: str, width: int, height: int, digest: str | None = None) -> Image.Image:
    """The image at `path` as RGB, EXIF-rotated like diffusers.utils.load_image, at width x height.

    Each image is read and decoded once per process (samples cycle over their images) and only
    its resized copy is kept (_fitted): a full-size decode is dropped as soon as it is resized.
    digest: refuse the image unless its bytes still have this digest (what the run recorded)."""
    return _fitted(path, width, height, digest).copy()


def load_sample_image(name: str, width: int, height: int, digest: str | None = None) -> Image.Image:
    """load_image, or the built-in image when name is BUILTIN_IMAGE."""
    return builtin_image(width, height) if name == BUILTIN_IMAGE else load_image(name, width, height, digest)


def read_image_bytes(path: str, what: str | None = None) -> bytes:
    """The bytes of an image file (a regular file only: a FIFO or device would block or never end)
    or of an http(s) URL (bounded in time and size, ppsvd.io.fetch)."""
    what = what or f"--image {path}"
    if is_url(path):
        return fetch_bytes(path, what)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputImageError(f"{what}: no such file; {_HINT}") from None
    except IsADirectoryError:
        raise InputImageError(f"{what}: is a directory where a file was expected; {_HINT}") from None
    except OSError as exc:
        raise InputImageError(f"{what}: cannot open it ({exc.strerror or type(exc).__name__}); {_HINT}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise InputImageError(f"{what}: is a directory where a file was expected; {_HINT}")
        if not stat.S_ISREG(info.st_mode):
            raise InputImageError(f"{what}: is {_kind(info.st_mode)}, not a regular file; {_HINT}")
        if info.st_size > IMAGE_MAX_BYTES:
            raise InputImageError(f"{what}: {info.st_size} bytes, more than the {IMAGE_MAX_BYTES}-byte limit; {_HINT}")
        try:
            data = fh.read(IMAGE_MAX_BYTES + 1)
        except OSError as exc:
            raise InputImageError(f"{what}: unreadable ({exc.strerror or type(exc).__name__}); {_HINT}") from None
    if len(data) > IMAGE_MAX_BYTES:
        raise InputImageError(f"{what}: more than the {IMAGE_MAX_BYTES}-byte limit; {_HINT}")
    return data


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


@functools.lru_cache(maxsize=32)
def _fitted(path: str, width: int, height: int, digest: str | None) -> Image.Image:
    """The image read, checked against digest, decoded and resized (never cached at full size)."""
    what = f"--image {path}"
    data = read_image_bytes(path, what)
    if digest is not None and digest_bytes(data) != digest:
        raise InputImageError(
            f"{what}: the image changed since this run recorded it ({digest[:19]}..., now "
            f"{digest_bytes(data)[:19]}...); put the original back, or start a new run"
        )
    return _fit(_decode(data, what, is_url(path)), width, height)


def _decode(data: bytes, what: str, url: bool = False) -> Image.Image:
    """RGB and EXIF-rotated, as diffusers.utils.load_image makes it. Refuses images above PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS, ~89 megapixels) before decoding them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image = ImageOps.exif_transpose(image)
                return image.convert("RGB")
    except UnidentifiedImageError:
        source = (
            "the server did not send an image PIL can read; check the URL"
            if url
            else f"not an image PIL can read; {_HINT}"
        )
        raise InputImageError(f"{what}: {source}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputImageError(
            f"{what}: too many pixels ({exc}); pass an image of at most {Image.MAX_IMAGE_PIXELS} pixels "
            "(it is resized to the video size anyway)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(f"{what}: unreadable image ({reason}); {_HINT}") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to exactly width x height (bicubic, like diffusers' default resample), keeping a copy
    when the size already matches."""
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), resample=Image.Resampling.BICUBIC)
