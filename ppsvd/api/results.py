"""What a finished run gave: its directory, every sample's files, the manifest and the metrics.

`RunResult.load(run_dir)` reads any finished run directory; `ppsvd.run` returns one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from ppsvd.analysis.metrics import summarize
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError


@dataclass(frozen=True)
class SampleOutput:
    """One sample of a finished run: where its files are, and its inputs."""

    run_dir: Path
    index: int
    name: str
    """File stem: '<image stem>-s<seed>'."""
    seed: int | None
    image: str | None
    conditioning: dict[str, Any]
    """fps, motion_bucket_id, noise_aug_strength this sample was generated with."""
    videos: tuple[Path, ...]
    """One MP4 per video (more than one when B > 1 in the latent shape)."""
    latents_path: Path | None
    frame_dirs: tuple[Path, ...]

    @property
    def video(self) -> Path | None:
        return self.videos[0] if self.videos else None

    def latents(self):
        """The final latent as saved, torch [B, F, C, H, W] (diffusers' output_type='latent')."""
        if self.latents_path is None:
            raise FileNotFoundError(f"sample {self.index} has no latents (the run was made with save_latents=False)")
        from safetensors.torch import load_file  # imports torch: only when a latent is read

        return load_file(str(self.latents_path))["latents"]

    def frames(self, video: int = 0):
        """The decoded video as uint8 numpy [F, H, W, 3]: exact from the PNG frames when the run saved
        them (save_frames=True), else decoded from the MP4 (H.264, so close but not exact)."""
        if video < len(self.frame_dirs):
            files = sorted(self.frame_dirs[video].glob("*.png"))
            return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        if video < len(self.videos):
            reader = imageio_ffmpeg.read_frames(str(self.videos[video]))
            meta = next(reader)
            width, height = meta["size"]
            return np.stack([np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader])
        raise FileNotFoundError(f"sample {self.index} has no video {video} (it has {len(self.videos)})")


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, every sample's outputs, the manifest and the metrics."""

    run_dir: Path
    manifest: dict[str, Any]
    samples: tuple[SampleOutput, ...]
    wall_s: float | None = None
    """The whole launch, seconds (process start-up and model load included); None when loaded from disk."""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, wall_s: float | None = None) -> RunResult:
        """Read a finished run directory (manifest.json)."""
        run_dir = Path(run_dir)
        path = run_dir / "manifest.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no manifest.json; pass the directory of a finished ppsvd run")
        manifest = json.loads(path.read_text())
        samples = tuple(_sample_output(run_dir, entry) for entry in manifest.get("samples", ()))
        return cls(run_dir=run_dir, manifest=manifest, samples=samples, wall_s=wall_s)

    @property
    def config(self) -> RunConfig:
        """The run's configuration (config.json)."""
        if "config" not in self._cache:
            self._cache["config"] = RunConfig.from_json(json.loads((self.run_dir / "config.json").read_text()))
        return self._cache["config"]

    @property
    def metrics(self):
        """Throughput, latency, fill, drain, utilisation (ppsvd.analysis.metrics.RunMetrics), from timeline.json."""
        if "metrics" not in self._cache:
            self._cache["metrics"] = summarize(RunTimeline.load(self.run_dir / "timeline.json"))
        return self._cache["metrics"]

    @property
    def videos(self) -> list[Path]:
        return [v for s in self.samples for v in s.videos]

    @property
    def latent_paths(self) -> list[Path]:
        return [s.latents_path for s in self.samples if s.latents_path is not None]


def _sample_output(run_dir: Path, entry: dict[str, Any]) -> SampleOutput:
    def path(rel: str) -> Path:
        return run_dir / rel

    return SampleOutput(
        run_dir=run_dir,
        index=entry["index"],
        name=entry.get("name") or Path(entry.get("latents") or f"sample_{entry['index']:05d}").stem,
        seed=entry.get("seed"),
        image=entry.get("image"),
        conditioning={k: entry[k] for k in ("fps", "motion_bucket_id", "noise_aug_strength") if k in entry},
        videos=tuple(path(v) for v in entry.get("videos", ())),
        latents_path=path(entry["latents"]) if entry.get("latents") else None,
        frame_dirs=tuple(path(f) for f in entry.get("frames", ())),
    )
