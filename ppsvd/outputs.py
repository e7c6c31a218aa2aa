"""Atomic writes of run outputs: nothing half-written ever stands under its final name.

Every file is written to a temporary name in the same directory, flushed and fsync'ed, then
renamed into place (os.replace is atomic on POSIX). A crash leaves at most a '.tmp-*' file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is moved to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.stem}-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Run writer(tmp_path) (e.g. a video encoder that wants a file name), then move into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_latents(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Final latents as safetensors (no pickle; loadable with safetensors.torch.load_file)."""
    from safetensors.torch import save_file

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def sample_stem(index: int) -> str:
    return f"sample_{index:05d}"


def make_run_dir(output_dir: Path, label: str) -> Path:
    """A new directory output_dir/<UTC time>-<label>[-k] that no earlier run used."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(output_dir) / f"{stamp}-{label}"
    candidate, k = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            k += 1
            candidate = base.with_name(f"{base.name}-{k}")


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
            from ppsvd import video

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
