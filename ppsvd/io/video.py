"""Writing decoded videos: MP4 (H.264 via the ffmpeg binary bundled with imageio-ffmpeg) and PNG frames.

Every file is written under a temporary name and moved into place (ppsvd.io.atomic), so a crash or
an encoder error never leaves a partial video under its final name.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from ppsvd.errors import OutputWriteError
from ppsvd.io.atomic import write_with

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
"""4:2:0 chroma: what every player decodes. It needs even sizes; odd ones are padded (see _pad_even)."""
ENCODE_TIMEOUT_S = 600.0
"""Longest one video's encode may take (seconds of frames at most: SVD videos are short)."""
CRF = "18"
"""x264 quality: visually near-lossless for these small videos; the exact pixels are in the latents."""


def write_mp4(path: str | Path, frames: Any, fps: int) -> Path:
    """Encode frames (uint8 [F, H, W, 3], numpy or torch) as an H.264 MP4 at `fps` frames per second.

    ffmpeg (the binary imageio-ffmpeg ships, with the command line its write_frames builds) runs
    with a finite timeout; its exit status is checked, and the file it wrote must read back as a
    video with F frames, or OutputWriteError says what ffmpeg said and nothing is left under `path`
    (a failed encode once left an empty MP4 listed as a finished sample)."""
    video = _pad_even(_as_frames(frames))
    count, height, width, _ = video.shape
    if fps <= 0:
        raise ValueError(f"fps({fps}) must be positive")
    path = Path(path)

    def encode(tmp: Path) -> None:
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            *("-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}", "-pix_fmt", "rgb24"),
            *("-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an"),
            *("-vcodec", CODEC, "-pix_fmt", PIXEL_FORMAT, "-v", "error", "-crf", CRF, "-movflags", "+faststart"),
            str(tmp),
        ]
        try:
            done = subprocess.run(
                command,
                input=video.tobytes(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=ENCODE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise OutputWriteError(
                f"ffmpeg did not finish encoding {path.name} within {ENCODE_TIMEOUT_S:g} s"
            ) from None
        if done.returncode != 0:
            said = _last_line(done.stderr) or "no message"
            raise OutputWriteError(f"ffmpeg could not encode {path.name} (exit status {done.returncode}: {said})")
        problem = _unreadable(tmp, count)
        if problem is not None:
            raise OutputWriteError(f"ffmpeg wrote no valid video for {path.name} ({problem})")

    write_with(path, encode)
    return path


def _unreadable(path: Path, frames: int) -> str | None:
    """None when `path` reads back as a video of `frames` frames, else what is wrong with it."""
    try:
        counted, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as exc:  # ffmpeg cannot open or parse it
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None if counted == frames else f"it holds {counted} frames instead of {frames}"


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def write_frames(directory: str | Path, frames: Any, prefix: str = "frame") -> list[Path]:
    """Write each frame of uint8 [F, H, W, 3] as `<prefix>_00000.png`, ... in `directory`."""

    video = _as_frames(frames)
    directory = Path(directory)
    written = []
    for i, frame in enumerate(video):
        path = directory / f"{prefix}_{i:05d}.png"
        image = Image.fromarray(np.ascontiguousarray(frame))
        write_with(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        written.append(path)
    return written


def read_mp4(path: str | Path) -> tuple[int, int, int]:
    """(frame_count, height, width) of a video, by decoding every frame (for tests and checks)."""

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    count = sum(1 for _ in reader)
    return count, height, width


def _as_frames(frames: Any) -> np.ndarray:
    """uint8 numpy [F, H, W, 3] from a numpy array or a (possibly CUDA) torch tensor."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames shape {tuple(video.shape)} must be [F, H, W, 3]")
    if video.dtype != np.uint8:
        raise ValueError(f"frames dtype {video.dtype} must be uint8")
    if video.shape[0] == 0:
        raise ValueError("frames has no frame; a video needs at least one")
    return video


def _pad_even(video: np.ndarray) -> np.ndarray:
    """Repeat the last row / column when height / width is odd: yuv420p cannot encode odd sizes.

    SVD's pixel sizes are the latent size times its VAE scale factor (8), so this only happens for unusual inputs.
    """
    _, height, width, _ = video.shape
    pad_h, pad_w = height % 2, width % 2
    if not pad_h and not pad_w:
        return video
    return np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
