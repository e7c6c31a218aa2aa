"""`ppsvd run`: generate SVD videos (images in, MP4s out) with the steps pipelined over N GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_MODEL_ID, DEFAULT_TOTAL_STEPS, RunConfig, default_latent_shape

NAME = "run"


def command(
    image: Annotated[
        Optional[list[str]],
        typer.Option("--image", help="Input image: a file, a directory or a glob; repeatable. Sample i uses image i mod count. Default: the built-in test image."),
    ] = None,
    model: o.ModelId = DEFAULT_MODEL_ID,
    weights: Annotated[str, typer.Option("--weights", help="pretrained, or random: the model's architecture with random weights (timing without a download).")] = "pretrained",
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    latent_shape: Annotated[
        Optional[tuple[int, int, int, int, int]],
        typer.Option("--latent-shape", help="B C F H W: videos per sample, latent channels, frames, latent height, latent width (pixels 8H x 8W). Default 1 4 14 64 64 (tiny: its own small shape)."),
    ] = None,
    num_samples: o.NumSamples = 1,
    seed: o.Seed = 0,
    fps: Annotated[int, typer.Option("--fps", help="Frame rate of the MP4 and the fps conditioning (the UNet sees fps-1, as in diffusers).")] = 6,
    motion_bucket_id: Annotated[int, typer.Option("--motion-bucket-id", help="Motion conditioning, 0..255.")] = 127,
    noise_aug_strength: Annotated[float, typer.Option("--noise-aug-strength", help="Noise added to the conditioning image.")] = 0.02,
    min_guidance_scale: Annotated[float, typer.Option("--min-guidance-scale", help="Guidance for the first frame.")] = 1.0,
    max_guidance_scale: Annotated[float, typer.Option("--max-guidance-scale", help="Guidance for the last frame (classifier-free guidance when > 1).")] = 3.0,
    decode_chunk_size: Annotated[Optional[int], typer.Option("--decode-chunk-size", help="Frames decoded at a time (default: all).")] = None,
    save_frames: Annotated[bool, typer.Option("--save-frames", help="Also write every frame as PNG.")] = False,
    nproc: o.NProc = None,
    transport: o.Transport = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    output_dir: o.OutputDir = Path("ppsvd-runs"),
    timeout: o.Timeout = 600.0,
    max_in_flight: o.MaxInFlight = 2,
    bind_host: o.BindHost = "127.0.0.1",
    zmq_endpoint: o.ZmqEndpoint = "auto",
    strategy: o.Strategy = "pipeline",
    no_progress: o.NoProgress = False,
    debug: o.Debug = False,
) -> int:
    """Generate videos with Stable Video Diffusion, the denoising steps pipelined over N GPUs.

    The videos equal what diffusers' StableVideoDiffusionPipeline produces for the same image,
    seed and settings, for any --nproc and transport. Also runs under torchrun
    (torchrun --nproc_per_node=7 -m ppsvd run ...). --model-id tiny runs an embedded small
    SVD on CPU in seconds.
    """
    from ppsvd.commands.common import execute, resolve_device, resolve_nproc
    from ppsvd.io.images import resolve_images

    if latent_shape is None:
        latent_shape = default_latent_shape(model)
    config = RunConfig(
        model=model,
        weights=weights,
        total_steps=total_steps,
        latent_shape=tuple(latent_shape),
        num_samples=num_samples,
        seed=seed,
        nproc=resolve_nproc(nproc),
        transport=transport,
        device=resolve_device(device),
        dtype=dtype,
        strategy=strategy,
        output_dir=output_dir,
        timeout_s=timeout,
        max_in_flight=max_in_flight,
        bind_host=bind_host,
        zmq_endpoint=zmq_endpoint,
        images=resolve_images(image) if image else (),
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        min_guidance_scale=min_guidance_scale,
        max_guidance_scale=max_guidance_scale,
        decode_chunk_size=decode_chunk_size,
        save_frames=save_frames,
        show_progress=not no_progress,
        debug=debug,
    )
    return execute(config)
