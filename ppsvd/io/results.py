"""The last stage's outputs: final latents (safetensors), videos (MP4), frames (PNG), the manifest.

Each file is written atomically (ppsvd.io.atomic), so a finished output is never half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppsvd.io import video
from ppsvd.io.atomic import write_json_atomic, write_with


def save_latents(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Final latents as safetensors (no pickle; loadable with safetensors.torch.load_file)."""
    from safetensors.torch import save_file

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def sample_stem(index: int) -> str:
    return f"sample_{index:05d}"


class ResultWriter:
    """Writes what the last stage produces, one sample at a time, each file atomically.

    Layout under run_dir: latents/sample_NNNNN.safetensors (key 'latents', [B, F, C, H, W]),
    videos/sample_NNNNN.mp4 (one per video; '_bJ' suffix when B > 1), frames/sample_NNNNN/
    (PNG, optional) and manifest.json, rewritten after every sample so that it always lists
    exactly the samples whose files are complete.
    """

    def __init__(self, run_dir: Path, config, plan, model_facts: dict | None = None, *, manifest_name: str = "manifest.json") -> None:
        self.run_dir = Path(run_dir)
        self.manifest_name = manifest_name
        self.config = config
        self.plan = plan
        self.entries: list[dict] = []
        self.model_facts = model_facts or {}

    def write(self, result) -> None:
        cfg = self.config
        stem = sample_stem(result.index)
        entry: dict[str, Any] = {"index": result.index, **{k: v for k, v in result.meta.items()}}
        if cfg.save_latents:
            path = self.run_dir / "latents" / f"{stem}.safetensors"
            save_latents(path, {"latents": result.latents}, metadata={"index": str(result.index), "layout": "B F C H W"})
            entry["latents"] = str(path.relative_to(self.run_dir))
        if result.frames is not None and (cfg.save_video or cfg.save_frames):
            videos, frame_dirs = [], []
            for b in range(result.frames.shape[0]):
                name = stem if result.frames.shape[0] == 1 else f"{stem}_b{b}"
                frames = result.frames[b]
                if cfg.save_video:
                    path = self.run_dir / "videos" / f"{name}.mp4"
                    video.write_mp4(path, frames, cfg.fps)
                    videos.append(str(path.relative_to(self.run_dir)))
                if cfg.save_frames:
                    folder = self.run_dir / "frames" / name
                    video.write_frames(folder, frames)
                    frame_dirs.append(str(folder.relative_to(self.run_dir)))
            entry["videos"] = videos
            if frame_dirs:
                entry["frames"] = frame_dirs
        if "started" in entry and "completed" in entry:
            entry["latency_s"] = entry["completed"] - entry["started"]
        self.entries.append(entry)
        self.write_manifest()

    def write_manifest(self) -> None:
        cfg = self.config
        write_json_atomic(
            self.run_dir / self.manifest_name,
            {
                "model": cfg.model,
                "weights": cfg.weights,
                "total_steps": cfg.total_steps,
                "latent_shape": list(cfg.latent_shape),
                "strategy": cfg.strategy,
                "partition": self.plan.to_json(),
                "seed": cfg.seed,
                "fps": cfg.fps,
                "model_facts": self.model_facts,
                "samples": sorted(self.entries, key=lambda e: e["index"]),
            },
        )
