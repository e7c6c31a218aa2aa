"""A job's input image: checked before the job is accepted, stored as the file the stages read.

The bytes are kept exactly as received, in uploads/<job id>.<format>, and stage 0 opens that
file with the same function `ppsvd run` uses for --image (io/images.load_image): a served job and
`ppsvd run --image <that file>` see the same pixels. The checks: the size of the request (the
caller bounds it), the pixel count from the header before any decoding (decompression bombs),
then a full decode, so a file the stages could not read is refused now (400), not later.
Image URLs are fetched only when the server allows them (--allow-image-urls), bounded in time
and size; data: URLs are decoded here.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.request
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ppsvd.io.atomic import write_bytes_atomic
from ppsvd.serve.schemas import ApiError, ImageRef

FETCH_TIMEOUT_S = 20.0
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def image_bytes(ref: ImageRef, *, max_bytes: int, allow_urls: bool) -> bytes:
    """The image's bytes: uploaded, decoded from a data: URL, or fetched (when allowed)."""
    if ref.data is not None:
        return ref.data
    url = ref.url or ""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(
                400, "input_reference: a data URL must be base64 (data:image/png;base64,...)", param="input_reference"
            )
        if len(payload) > max_bytes * 4 // 3 + 4:
            raise ApiError(
                413,
                f"input_reference: the image is larger than {max_bytes / 2**20:g} MiB (--max-upload-mb)",
                param="input_reference",
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "input_reference: the data URL is not valid base64", param="input_reference") from None
    if url.startswith(("http://", "https://")):
        if not allow_urls:
            raise ApiError(
                400,
                "input_reference: image URLs are off on this server (it would fetch them for you); upload the "
                "image, send it as a data: URL, or start the server with --allow-image-urls",
                param="input_reference",
            )
        return _fetch(url, max_bytes)
    raise ApiError(400, f"input_reference: {url[:60]!r} is no data: or http(s) URL", param="input_reference")


def _fetch(url: str, max_bytes: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - http(s) only, checked above
            data = response.read(max_bytes + 1)
    except Exception as exc:  # refused, timeout, DNS, HTTP errors alike
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ApiError(400, f"input_reference: could not fetch {url} ({reason})", param="input_reference") from None
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"input_reference: {url} is larger than {max_bytes / 2**20:g} MiB (--max-upload-mb)",
            param="input_reference",
        )
    return data


def check_image(data: bytes, max_pixels: int) -> str:
    """The file extension for these bytes if they are an image the stages can read, else ApiError."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise ApiError(
                    413,
                    f"input_reference: {width}x{height} is {width * height} pixels, above this server's "
                    f"{max_pixels} (--max-image-pixels); send a smaller image (the video is "
                    "made at the served size anyway)",
                    param="input_reference",
                    code="image_too_large",
                )
            image.load()
            kind = image.format or ""
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        reason = "not an image PIL can read" if isinstance(exc, UnidentifiedImageError) else f"unreadable image ({exc})"
        raise ApiError(
            400,
            f"input_reference: {reason}; upload a PNG, JPEG or WebP file",
            param="input_reference",
            code="invalid_image",
        ) from None
    return _EXTENSIONS.get(kind, "img")


def store_image(uploads: Path, job_id: str, data: bytes, extension: str) -> str:
    """Write the image under its job's id (atomic, fsync'ed); returns the file name."""
    name = f"{job_id}.{extension}"
    write_bytes_atomic(Path(uploads) / name, data)
    fsync_dir(Path(uploads))  # the rename too is durable before the job's row is committed
    return name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
