"""Writing decoded videos: MP4 (H.264 via the ffmpeg binary bundled with imageio-ffmpeg) and PNG frames.

Every file is written under a temporary name and moved into place (ppsvd.io.atomic), so a crash or
an encoder error never leaves a partial video under its final name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from ppsvd.io.atomic import write_with

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
"""4:2:0 chroma: what every player decodes. It needs even sizes; odd ones are padded (see _pad_even)."""
CRF = "18"
"""x264 quality: visually near-lossless for these small videos; the exact pixels are in the latents."""


def write_mp4(path: str | Path, frames: Any, fps: int) -> Path:
    """Encode frames (uint8 [F, H, W, 3], numpy or torch) as an H.264 MP4 at `fps` frames per second."""

    video = _pad_even(_as_frames(frames))
    _, height, width, _ = video.shape
    if fps <= 0:
        raise ValueError(f"fps({fps}) must be positive")

    def encode(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            pix_fmt_in="rgb24",
            pix_fmt_out=PIXEL_FORMAT,
            fps=fps,
            codec=CODEC,
            quality=None,  # use the CRF below, not imageio's own quality scale
            macro_block_size=1,  # keep the exact size (imageio would otherwise rescale to multiples of 16)
            output_params=["-crf", CRF, "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start the ffmpeg process
        try:
            for frame in video:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()

    path = Path(path)
    write_with(path, encode)
    return path


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
