"""`ppsvd verify`: diffusers' pipeline and ppsvd's layouts on the same inputs, compared on this machine.

Exit 0 when every layout keeps its promise (bitwise, or within its documented bound), 1 naming the
ones that do not (or did not run), 2 for bad input before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ppsvd.api.options import resolve_device
from ppsvd.commands import options as o
from ppsvd.commands.tables import verify_table
from ppsvd.console import err, out
from ppsvd.errors import VerificationFailed
from ppsvd.verify.settings import VERIFY_SAMPLES, default_model, verify_config

NAME = "verify"

Layouts = Annotated[
    str | None,
    typer.Option(
        "--layouts",
        help="Comma-separated STRATEGY:N[:TRANSPORT][:compile], e.g. pipeline:1,pipeline:3:zmq,data:2,cfg:2. "
        "Default: 1 process; a pipeline (3 stages over gloo and zmq on CPU, one per GPU, or 3 on the one GPU); "
        "data on 2; a guidance pair when guidance is on. On CUDA, N above the visible GPUs shares them (gloo/zmq).",
    ),
]


def command(
    model: Annotated[
        str | None,
        typer.Option(
            "--model-id",
            "--model",
            help="Hub id or local directory of an SVD model; 'tiny' for the embedded small SVD. Default: tiny on CPU, "
            "stabilityai/stable-video-diffusion-img2vid-xt on CUDA.",
        ),
    ] = None,
    weights: o.Weights = "pretrained",
    device: o.Device = None,
    dtype: o.Dtype = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="Input image(s), as for `ppsvd run`. Default: the built-in test image."),
    ] = None,
    num_frames: Annotated[int | None, typer.Option("--num-frames", help="Frames. Default 3 (tiny), else 4.")] = None,
    height: Annotated[int | None, typer.Option("--height", help="Pixels. Default 64 (tiny), else 256.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Pixels. Default 64 (tiny), else 256.")] = None,
    latent_shape: Annotated[
        tuple[int, int, int, int, int] | None,
        typer.Option("--latent-shape", help="B C F H W instead of --num-frames/--height/--width."),
    ] = None,
    num_inference_steps: Annotated[
        int | None, typer.Option("--num-inference-steps", "--total-steps", help="Denoising steps. Default 6.")
    ] = None,
    num_samples: Annotated[
        int, typer.Option("--num-samples", help="Samples each side makes (sample i uses seed + i).")
    ] = VERIFY_SAMPLES,
    seed: o.Seed = 0,
    min_guidance_scale: Annotated[float, typer.Option("--min-guidance-scale")] = 1.0,
    max_guidance_scale: Annotated[
        float, typer.Option("--max-guidance-scale", help="Above 1: classifier-free guidance (and a guidance pair).")
    ] = 3.0,
    decode_chunk_size: Annotated[int | None, typer.Option("--decode-chunk-size")] = None,
    layouts: Layouts = None,
    compile: o.Compile = False,
    timeout: o.Timeout = 600.0,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", help="Keep each layout's run directory here. Default: a scratch directory, removed."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.", **o.FLAG)] = False,
    debug: o.Debug = False,
) -> None:
    """Check ppsvd against diffusers' own StableVideoDiffusionPipeline on this machine.

    Runs diffusers' pipeline in this process and ppsvd's layouts (fresh worker processes, as `ppsvd
    run`) on the same images, seeds and settings; compares every sample's final latents and frames:
    bitwise for pipeline and data layouts, within the documented bound for a guidance pair or
    --compile; and reports each layout's throughput relative to diffusers'. Short by default (6
    steps, a small shape, 3 samples). Exit 0 when every layout keeps its promise, 1 naming those
    that do not.
    """
    # heavy: imports torch (the layouts' test hook, models.faults); --help stays quick
    from ppsvd.verify.check import verify
    from ppsvd.verify.layouts import default_layouts, parse_layouts

    device = resolve_device(device)
    config = verify_config(
        model_id=model or default_model(device),
        weights=weights,
        device=device,
        dtype=dtype,
        images=image or (),
        latent_shape=latent_shape,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        num_samples=num_samples,
        seed=seed,
        min_guidance_scale=min_guidance_scale,
        max_guidance_scale=max_guidance_scale,
        decode_chunk_size=decode_chunk_size,
        timeout=timeout,
        debug=debug,
    )
    if layouts:
        chosen = [lay.with_compile(compile) for lay in parse_layouts(layouts)]
    else:
        chosen = default_layouts(device, _visible_gpus(device), guidance=config.svd.uses_guidance, compile=compile)

    def say(line: str) -> None:
        err.print(line, style="dim", markup=False, highlight=False)

    report = verify(config, chosen, output_dir=output_dir, say=say)
    if as_json:
        print(json.dumps(report.to_json(), indent=1), flush=True)
    else:
        out.print(verify_table(report))
    if not report.ok:
        problems = "; ".join(f"{r.layout}: {r.problem}" for r in report.failed)
        raise VerificationFailed(f"verify failed: {problems}")


def _visible_gpus(device: str) -> int:
    if device != "cuda":
        return 0
    import torch  # heavy: torch

    return torch.cuda.device_count()
