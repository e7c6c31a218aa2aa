"""The reference: diffusers' own StableVideoDiffusionPipeline, in this process, on the same inputs.

The pipeline is diffusers' class with the same weights the stages load: for `tiny` and
`--weights random` the same seeded construction (ppsvd.models.tiny: the model definition, not
the math), for a hub id or a directory `StableVideoDiffusionPipeline.from_pretrained` as a user
calls it. Each sample is one ordinary call with output_type="np" (what a user times); its final
latents are the loop's last `latents`, taken with diffusers' callback_on_step_end: the very
tensor output_type="latent" returns (tests/test_verify.py checks that they are equal), so one
call gives both and the timing is that of one call.

On CPU the intra-op thread count is the stages' (ppsvd.runtime.worker.cpu_threads): float
results depend on it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ppsvd.config import RunConfig
from ppsvd.io.images import load_sample_image
from ppsvd.io.samples import sample_spec
from ppsvd.models import hub, tiny
from ppsvd.models.base import synchronize, torch_dtype
from ppsvd.models.svd import frames_to_uint8, model_source, weights_variant


@dataclass
class ReferenceSample:
    """What diffusers returned for one sample."""

    index: int
    latents: torch.Tensor
    """Final latents [B, F, C, H, W] in the run's dtype, on the CPU."""
    frames: np.ndarray
    """uint8 [B, F, H, W, 3], rounded as diffusers' numpy_to_pil does."""
    seconds: float
    """The whole pipe(...) call: encode, every step, decode."""


@dataclass
class Reference:
    """diffusers' results for every sample, and how fast it produced them."""

    samples: dict[int, ReferenceSample] = field(default_factory=dict)
    threads: int | None = None
    """CPU: intra-op threads it ran with (the stages' count); None on CUDA."""

    @property
    def seconds(self) -> list[float]:
        return [self.samples[i].seconds for i in sorted(self.samples)]

    @property
    def throughput(self) -> float | None:
        """Samples per second in steady state: the first call (warm-up: kernel selection, lazy
        allocations) is left out when there are more, as a pipeline's steady rate leaves out its fill."""
        times = self.seconds
        steady = times[1:] if len(times) > 1 else times
        return len(steady) / sum(steady) if steady and sum(steady) > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"seconds_per_sample": self.seconds, "samples_per_sec": self.throughput, "cpu_threads": self.threads}


def build_pipeline(config: RunConfig):
    """diffusers' StableVideoDiffusionPipeline with the weights config's stages load, on its device and dtype."""
    from diffusers import StableVideoDiffusionPipeline  # heavy: diffusers

    if not config.ui.debug:  # loading notices and dtype-cast warnings are not for users (as in the stages)
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()

    device, dtype = torch.device(config.model.device), torch_dtype(config.model.resolved_dtype)
    source = model_source(config)
    if source in ("tiny", "random"):
        # The same seeded construction as the stages' (tiny on the CPU then moved; SVD-XT built on its device).
        family = tiny.TINY if source == "tiny" else tiny.SVD_XT
        parts = tiny.build_components(family, device="cpu" if source == "tiny" else device)
        pipe = StableVideoDiffusionPipeline(**parts)
    else:
        model = config.model.model
        location = os.path.expanduser(model) if source == "local" else model
        cache = (
            {}
            if source == "local"
            else {
                "cache_dir": hub.hub_cache_dir(),
                "local_files_only": hub.hub_offline(),
                "revision": config.model.revision,
            }
        )
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            location, torch_dtype=dtype, variant=weights_variant(config, source, "unet"), **cache
        )
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_sample(pipe, config: RunConfig, index: int) -> ReferenceSample:
    """One sample through diffusers' pipeline, exactly as `ppsvd run` would make sample `index`
    (its image resized by ppsvd as the README says, its seed and conditioning)."""
    spec = sample_spec(config, index)
    b, _, f, h, w = config.job.latent_shape
    height, width = h * pipe.vae_scale_factor, w * pipe.vae_scale_factor
    image = load_sample_image(spec.image, width, height)
    steps = config.job.total_steps
    final: dict[str, torch.Tensor] = {}

    def keep_final_latents(_pipe, i, _t, tensors):
        if i == steps - 1:
            final["latents"] = tensors["latents"].detach().clone()
        return {}

    device = torch.device(config.model.device)
    synchronize(device)
    started = time.perf_counter()
    frames = pipe(
        image,
        height=height,
        width=width,
        num_frames=f,
        num_inference_steps=steps,
        fps=spec.fps,
        motion_bucket_id=spec.motion_bucket_id,
        noise_aug_strength=spec.noise_aug_strength,
        min_guidance_scale=config.svd.min_guidance_scale,
        max_guidance_scale=config.svd.max_guidance_scale,
        decode_chunk_size=config.svd.decode_chunk_size,
        num_videos_per_prompt=b,
        generator=torch.Generator("cpu").manual_seed(spec.seed),
        output_type="np",
        callback_on_step_end=keep_final_latents,
        callback_on_step_end_tensor_inputs=["latents"],
    ).frames
    synchronize(device)
    seconds = time.perf_counter() - started
    return ReferenceSample(index=index, latents=final["latents"].cpu(), frames=frames_to_uint8(frames), seconds=seconds)


def decode(pipe, latents: torch.Tensor, config: RunConfig) -> np.ndarray:
    """diffusers' own decode of these latents (decode_latents + postprocess_video, as its
    __call__ does after the loop), uint8 [B, F, H, W, 3]: what a layout's frames must be when
    its latents are not the reference's (a guidance pair, a compiled UNet)."""
    _, _, f, _, _ = config.job.latent_shape
    chunk = config.svd.decode_chunk_size or f
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype)
    with torch.no_grad():
        frames = pipe.decode_latents(latents, f, chunk)
        video = pipe.video_processor.postprocess_video(video=frames, output_type="np")
    return frames_to_uint8(video)


def keep_only_the_decoder(pipe) -> None:
    """Free what the frame checks do not need (UNet, image encoder), so the layouts' stages find
    the GPU's memory as free as it can be; the VAE stays for decode()."""
    pipe.unet = None
    pipe.image_encoder = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
