"""Video outputs: MP4 through imageio-ffmpeg's bundled ffmpeg, PNG frames, and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ppsvd.io import video
from ppsvd.io.video import read_mp4, write_frames, write_mp4


def frames(count: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def test_write_mp4_reads_back_count_and_size(tmp_path):
    path = write_mp4(tmp_path / "out" / "sample.mp4", frames(14, 64, 48), fps=6)
    assert path == tmp_path / "out" / "sample.mp4"
    assert read_mp4(path) == (14, 64, 48)
    assert [p.name for p in path.parent.iterdir()] == ["sample.mp4"]  # no temporary left behind


def test_write_mp4_accepts_torch_and_odd_sizes(tmp_path):
    """yuv420p needs even sizes: an odd one is padded by one repeated row / column."""
    path = write_mp4(tmp_path / "odd.mp4", torch.from_numpy(frames(3, 17, 9)), fps=8)
    assert read_mp4(path) == (3, 18, 10)


def test_write_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        write_mp4(tmp_path / "bad.mp4", np.zeros((2, 8, 8), np.uint8), fps=6)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "bad.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=6)
    assert not (tmp_path / "bad.mp4").exists()


def test_failed_encode_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    """The encoder writes part of a file and dies: nothing appears under the final name, an older
    file there is untouched, and the temporary is removed."""
    import imageio_ffmpeg

    def broken_writer(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"\x00\x00\x00\x18ftypisom partial")
        yield
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken_writer)
    fresh = tmp_path / "fresh.mp4"
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_mp4(fresh, frames(2, 8, 8), fps=6)
    assert not fresh.exists()

    older = tmp_path / "older.mp4"
    older.write_bytes(b"previous video")
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_mp4(older, frames(2, 8, 8), fps=6)
    assert older.read_bytes() == b"previous video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["older.mp4"]


def test_write_frames_pngs(tmp_path):
    data = frames(3, 10, 12)
    paths = write_frames(tmp_path / "frames", data)
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for path, frame in zip(paths, data, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), frame)  # PNG is lossless


def test_codec_settings_are_player_friendly():
    assert (video.CODEC, video.PIXEL_FORMAT) == ("libx264", "yuv420p")
