"""Stable Video Diffusion as a StageModel, bitwise equal to diffusers' StableVideoDiffusionPipeline.

No math is copied from diffusers. Each stage wraps the components it loaded in a
StableVideoDiffusionPipeline (None for the ones it does not need) and calls that pipeline's own
helpers (_encode_image, _encode_vae_image, _get_add_time_ids, prepare_latents, decode_latents,
video_processor) in the order of StableVideoDiffusionPipeline.__call__, drawing from a generator
seeded like the reference's in the same order. Only the denoising loop is written out here,
statement for statement as in __call__, because it is what the stages split between them: stage
k sets the full schedule and starts it at its own first step (set_begin_index), so its step i
uses exactly the sigma the reference's step i uses.

What a stage loads (every stage: UNet + scheduler):
    stage 0        + CLIP image encoder, feature extractor, VAE encoder (decoder too if also last)
    last stage     + VAE decoder
Where from (config.model / config.weights):
    'tiny'            the small SVD of ppsvd.models.tiny, built in code with seeded weights
    --weights random  SVD-XT's architecture from configs shipped in the package, seeded weights
    a directory       from_pretrained(directory, subfolder=...)
    a hub id          from_pretrained(id, subfolder=...) through the Hugging Face cache
                      (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE are honoured)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppsvd.backends.protocol import Schema, TensorSpec, dtype_name
from ppsvd.config import DEFAULT_MODEL_ID, TINY_MODEL, RunConfig, SvdSection
from ppsvd.errors import ConfigError, ModelNotFoundError
from ppsvd.io.images import check_image, load_sample_image, with_images_resolved
from ppsvd.io.samples import SampleSpec, plan_samples, sample_spec
from ppsvd.models import hub, pixels, shipped, tiny
from ppsvd.models.base import Sample, SampleResult, StageModel, StepCallback, synchronize, torch_dtype
from ppsvd.models.faults import fault_for
from ppsvd.models.hub import CONFIG_FILES, FP16_VARIANT, WEIGHT_FILES, predownload_command, stage_components
from ppsvd.planning.ranks import decode_split
from ppsvd.shapes import LatentShape

# Tensors that travel with a sample from stage to stage (diffusers' names; k = 2 with CFG, else 1).
LATENTS = "latents"  # [B, F, C, H, W], the state being denoised
IMAGE_LATENTS = "image_latents"  # [k*B, F, C, H, W], VAE latent of the input image, per frame
IMAGE_EMBEDDINGS = "image_embeddings"  # [k*B, 1, D], CLIP image embedding
ADDED_TIME_IDS = "added_time_ids"  # [k*B, 3], fps-1, motion bucket, noise augmentation
GUIDANCE_SCALE = "guidance_scale"  # [B, F, 1, 1, 1], per-frame CFG weight
HANDOFF = (LATENTS, IMAGE_LATENTS, IMAGE_EMBEDDINGS, ADDED_TIME_IDS, GUIDANCE_SCALE)
CONDITIONING = (IMAGE_LATENTS, IMAGE_EMBEDDINGS, ADDED_TIME_IDS)
"""The tensors diffusers doubles for CFG ([unconditional; conditional]); a guidance half keeps its own."""
NOISE_PRED = "noise_pred"  # what guidance partners swap every step, [B, F, C, H, W]
FRAMES = "frames"  # what the conditional half sends of the decode, uint8 [rows, H, W, 3]


# -- where the model comes from ------------------------------------------------------------------


def model_source(config: RunConfig) -> str:
    """'tiny', 'random', 'local' (a directory, or a path that does not exist) or 'hub' (an id
    resolved through the HF cache): see hub.locate."""
    if config.model.model == TINY_MODEL:
        return "tiny"
    if config.model.weights == "random":
        return "random"
    return hub.locate(config.model.model)


def weights_variant(config: RunConfig, source: str, name: str) -> str | None:
    """The variant= of one component's from_pretrained, as diffusers' pipeline takes it.

    --variant given: that one. Otherwise the files on disk decide: an fp16 run takes the fp16
    files when they are there, any run takes what is there (SVD-XT's repo has both; some people
    fetch one). With nothing on disk yet, an fp16 run asks for the fp16 files (half the download)
    and _from_pretrained falls back to the full-precision ones if the repository has none.
    """
    if config.model.variant is not None:
        return config.model.variant
    fp16_run = config.model.resolved_dtype == FP16_VARIANT
    full, half = (_on_disk(config, source, name, variant) for variant in (None, FP16_VARIANT))
    if half and (fp16_run or not full):
        return FP16_VARIANT
    if full:
        return None
    return FP16_VARIANT if fp16_run else None


def _on_disk(config: RunConfig, source: str, name: str, variant: str | None) -> bool:
    """Whether this component's weights (of that variant; None: the plain files) are on disk."""
    files = WEIGHT_FILES.get(name, ())
    names = [hub.variant_name(f, variant) if variant else f for f in files]
    return any(hub.find(config.model.model, source, f"{name}/{f}", revision=config.model.revision) for f in names)


def _describe_missing(missing: list[str]) -> str:
    """'not in' when no file at all is there, else 'incomplete in ... (missing a, b)'."""
    if len(missing) == len(CONFIG_FILES) + len(WEIGHT_FILES):
        return "not in"
    return f"incomplete (missing {', '.join(missing)}) in"


# -- loading -------------------------------------------------------------------------------------


def load_components(
    config: RunConfig, names: tuple[str, ...], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The named components on `device`, modules in `dtype` and eval mode.

    Parameters keep requires_grad=True, as diffusers' pipeline leaves them: all calls run under
    torch.no_grad anyway, and frozen weights are *not* numerically neutral on CPU (measured with
    torch 2.13: the tiny UNet's output changes in the last bits with requires_grad_(False),
    because some kernels take another path for weights that need no gradient).
    """
    source = model_source(config)
    if source == "tiny":
        parts = tiny.build_components(shipped.TINY, names)
    elif source == "random":
        parts = tiny.build_components(shipped.SVD_XT, names, device=device)
    else:
        parts = {name: _from_pretrained(config, source, name, dtype) for name in names}
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(device=device).eval()
            if part.dtype != dtype:  # loaded weights already come in dtype; built ones in fp32
                _cast(part, dtype)
    return parts


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """module.to(dtype) without diffusers' warning, which it logs on every dtype cast of a model
    (its own pipeline's fp16 VAE upcast included) even when no module needs to stay in fp32."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        module.to(dtype=dtype)
    finally:
        logger.setLevel(level)


def _from_pretrained(config: RunConfig, source: str, name: str, dtype: torch.dtype) -> Any:
    """One component through its library's own from_pretrained, as diffusers' pipeline loads it
    (revision and variant as StableVideoDiffusionPipeline.from_pretrained(revision=, variant=))."""
    variant = weights_variant(config, source, name)
    try:
        return _load_component(config, source, name, dtype, variant)
    except (OSError, ValueError):
        # Our own guess (fp16 for an fp16 run, nothing on disk yet) and the repository has no
        # fp16 files: take the full-precision ones, as a run without that guess would.
        guessed = (
            config.model.variant is None
            and variant == FP16_VARIANT
            and not _on_disk(config, source, name, FP16_VARIANT)
        )
        if not guessed or name not in WEIGHT_FILES:
            raise
        return _load_component(config, source, name, dtype, None)


def _load_component(config: RunConfig, source: str, name: str, dtype: torch.dtype, variant: str | None) -> Any:
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
    if name not in WEIGHT_FILES:
        variant = None  # configs and processors have no variants
    if name == "unet":
        from diffusers import UNetSpatioTemporalConditionModel  # heavy: diffusers

        return UNetSpatioTemporalConditionModel.from_pretrained(
            location, subfolder=name, torch_dtype=dtype, variant=variant, **cache
        )
    if name == "vae":
        from diffusers import AutoencoderKLTemporalDecoder  # heavy: diffusers

        return AutoencoderKLTemporalDecoder.from_pretrained(
            location, subfolder=name, torch_dtype=dtype, variant=variant, **cache
        )
    if name == "image_encoder":
        from transformers import CLIPVisionModelWithProjection  # heavy: transformers

        return CLIPVisionModelWithProjection.from_pretrained(
            location, subfolder=name, dtype=dtype, variant=variant, **cache
        )
    if name == "feature_extractor":
        from transformers import CLIPImageProcessor  # heavy: transformers

        return CLIPImageProcessor.from_pretrained(location, subfolder=name, **cache)
    if name == "scheduler":
        from diffusers import EulerDiscreteScheduler  # heavy: diffusers

        return EulerDiscreteScheduler.from_pretrained(location, subfolder=name, **cache)
    raise ValueError(f"unknown component {name!r}")


def _keep_vae_halves(vae: Any, encoder: bool, decoder: bool) -> None:
    """Free the VAE half a stage never runs (the decoder is most of SVD's VAE)."""
    if not decoder:
        vae.decoder = None
    if not encoder:
        vae.encoder = None
        vae.quant_conv = None


# -- the stage model -----------------------------------------------------------------------------


class SVDStageModel(StageModel):
    def __init__(self, config: RunConfig, plan, stage: int, device: torch.device) -> None:
        super().__init__(config, plan, stage, torch.device(device))
        from diffusers import StableVideoDiffusionPipeline  # heavy: diffusers

        self.dtype = torch_dtype(config.model.resolved_dtype)
        self.source = model_source(config)
        self.components = stage_components(self.is_first, self.is_last)
        parts = load_components(config, self.components, self.device, self.dtype)
        self.unet = parts["unet"]
        # --compile: torch.compile the UNet in place (the pipeline below holds the same module).
        self.compiled = compile_unet(self.unet) if config.model.compile else None
        self.scheduler = parts["scheduler"]
        self.vae = parts.get("vae")
        if self.vae is not None:
            _keep_vae_halves(self.vae, encoder=self.is_first, decoder=self.is_last)
        # The reference computes CFG on when max_guidance_scale > 1 while encoding (before the
        # per-frame scale exists); the hand-off shapes follow from it.
        self.encode_with_cfg = config.svd.max_guidance_scale > 1
        self.pipe = StableVideoDiffusionPipeline(
            vae=self.vae,
            image_encoder=parts.get("image_encoder"),
            unet=self.unet,
            scheduler=self.scheduler,
            feature_extractor=parts.get("feature_extractor"),
        )
        # Each sample's image, seed and conditioning (stage 0 starts samples; the rest travels with them).
        self.config = with_images_resolved(config) if self.is_first else config
        self.specs = plan_samples(self.config) if self.is_first else ()
        self.fault = fault_for(config, stage)  # PPSVD_FAULT, a test hook: None in normal use

    @staticmethod
    def loading_text(config: RunConfig, is_first: bool, is_last: bool) -> str:
        source = {"tiny": "the embedded tiny SVD", "random": "random weights"}.get(
            model_source(config), config.model.model
        )
        return f"loading {', '.join(stage_components(is_first, is_last))} from {source}"

    # -- shapes --------------------------------------------------------------------------------
    @property
    def pixel_size(self) -> tuple[int, int]:
        """(height, width) in pixels: the latent size times the VAE's scale factor (diffusers'
        pipe.vae_scale_factor: 2 ** (VAE levels - 1), as ppsvd.models.pixels computes it)."""
        _, _, _, h, w = self.config.job.latent_shape
        scale = self.pipe.vae_scale_factor
        return h * scale, w * scale

    def schema(self) -> Schema:
        shape = LatentShape(*self.config.job.latent_shape)
        b, f = shape.b, shape.f
        k = 2 if self.encode_with_cfg and self.guidance_half is None else 1
        dim = self.unet.config.cross_attention_dim
        dtype = dtype_name(self.dtype)
        specs = (
            TensorSpec(LATENTS, dtype, shape.handoff()),
            TensorSpec(IMAGE_LATENTS, dtype, shape.handoff(batch=k * b)),
            TensorSpec(IMAGE_EMBEDDINGS, dtype, (k * b, 1, dim)),
            TensorSpec(ADDED_TIME_IDS, dtype, (k * b, 3)),
            TensorSpec(GUIDANCE_SCALE, dtype, (b, f, 1, 1, 1)),
        )
        return {spec.name: spec for spec in specs}

    # -- stage 0 -------------------------------------------------------------------------------
    def prepare(self, index: int, spec: SampleSpec | None = None) -> Sample:
        if spec is None:
            spec = self.specs[index] if index < len(self.specs) else sample_spec(self.config, index)
        height, width = self.pixel_size
        image = load_sample_image(spec.image, width, height)
        generator = torch.Generator("cpu").manual_seed(spec.seed)
        with torch.no_grad():
            tensors = self._initial_state(image, generator, spec)
        if self.guidance_half is not None:  # diffusers' [unconditional; conditional]: keep our half
            tensors.update({name: tensors[name].chunk(2)[self.guidance_half].clone() for name in CONDITIONING})
        # The conditioning is in the tensors (added_time_ids, noise-augmented image latents); the
        # facts travel in the header for the manifest and the writer (MP4 frame rate, file name).
        return Sample(index=index, tensors=tensors, meta=spec.conditioning())

    def _initial_state(self, image, generator: torch.Generator, spec: SampleSpec) -> dict[str, torch.Tensor]:
        """Steps 3-8 of StableVideoDiffusionPipeline.__call__, in its order (the generator's draws:
        first the image's noise augmentation, then the initial latents), with this sample's fps,
        motion bucket and noise augmentation."""
        # heavy: diffusers
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _append_dims
        from diffusers.utils.torch_utils import randn_tensor

        pipe, cfg, device, config = self.pipe, self.encode_with_cfg, self.device, self.config
        b, _, f, _, _ = config.job.latent_shape
        height, width = self.pixel_size

        # [k*B, 1, D]; one PIL image, so the reference's batch_size is 1 and B is num_videos_per_prompt.
        image_embeddings = pipe._encode_image(image, device, b, cfg)
        dtype = image_embeddings.dtype
        # SVD was micro-conditioned on fps - 1 (diffusers does the same subtraction).
        fps = spec.fps - 1

        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + spec.noise_aug_strength * noise
        image_latents = self._encode_pixels(pixels, b, cfg).to(dtype)
        image_latents = image_latents.unsqueeze(1).repeat(1, f, 1, 1, 1)  # [k*B, F, C, H, W]

        added_time_ids = pipe._get_add_time_ids(fps, spec.motion_bucket_id, spec.noise_aug_strength, dtype, 1, b, cfg)
        added_time_ids = added_time_ids.to(device)

        # init_noise_sigma depends on the schedule, so it is set before the latents are drawn.
        self.scheduler.set_timesteps(config.job.total_steps, device=device)
        latents = pipe.prepare_latents(b, f, self.unet.config.in_channels, height, width, dtype, device, generator)

        guidance_scale = frame_guidance(spec.guidance(config.svd), f).unsqueeze(0)
        guidance_scale = guidance_scale.to(device, latents.dtype).repeat(b, 1)
        guidance_scale = _append_dims(guidance_scale, latents.ndim)
        return {
            LATENTS: latents,
            IMAGE_LATENTS: image_latents,
            IMAGE_EMBEDDINGS: image_embeddings,
            ADDED_TIME_IDS: added_time_ids,
            GUIDANCE_SCALE: guidance_scale,
        }

    def _encode_pixels(self, pixels: torch.Tensor, b: int, cfg: bool) -> torch.Tensor:
        """pipe._encode_vae_image, with the reference's fp16 VAE upcast around it."""
        vae = self.vae
        needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcasting:
            _cast(vae, torch.float32)
        try:
            return self.pipe._encode_vae_image(
                pixels, device=self.device, num_videos_per_prompt=b, do_classifier_free_guidance=cfg
            )
        finally:
            if needs_upcasting:
                _cast(vae, torch.float16)

    # -- every stage ---------------------------------------------------------------------------
    def run_steps(self, sample: Sample, steps: range, on_step: StepCallback | None = None) -> Sample:
        if not steps:
            return sample
        if self.fault is not None:
            self.fault.fail(self.stage, sample.index)
        t = sample.tensors
        latents = t[LATENTS]
        image_latents, image_embeddings, added_time_ids = t[IMAGE_LATENTS], t[IMAGE_EMBEDDINGS], t[ADDED_TIME_IDS]
        guidance_scale = t[GUIDANCE_SCALE]
        # In the loop the reference decides CFG from the per-frame scale tensor.
        cfg = bool(guidance_scale.max() > 1)
        scheduler = self.scheduler
        scheduler.set_timesteps(self.config.job.total_steps, device=self.device)
        scheduler.set_begin_index(steps.start)
        with torch.no_grad():
            for i in steps:
                timestep = scheduler.timesteps[i]
                if cfg and self.guidance_half is not None:
                    latents = self._half_step(
                        latents, timestep, i, image_latents, image_embeddings, added_time_ids, guidance_scale
                    )
                else:
                    latents = self._step(
                        latents, timestep, image_latents, image_embeddings, added_time_ids, guidance_scale, cfg
                    )
                if on_step is not None:
                    on_step(i)
        if self.fault is not None:
            latents = self.fault.perturb(latents, self.stage, sample.index)
        return Sample(index=sample.index, tensors={**t, LATENTS: latents}, meta=sample.meta)

    def warm_up(self) -> float | None:
        """--compile: one UNet call on a throwaway input with the batch this stage runs (2B with
        guidance, B for a guidance half), so the compilation happens here, timed, before the start
        barrier, and neither calibration nor the samples pay for it. Eager: nothing to do."""
        if self.compiled is None:
            return None
        t = self.throwaway_sample().tensors
        both_halves = self.encode_with_cfg and self.guidance_half is None
        latents = torch.cat([t[LATENTS]] * 2) if both_halves else t[LATENTS]
        self.scheduler.set_timesteps(self.config.job.total_steps, device=self.device)
        timestep = self.scheduler.timesteps[self.plan.ranges[self.stage].start]
        synchronize(self.device)
        started = time.perf_counter()
        with torch.no_grad():
            self._unet(latents, timestep, t[IMAGE_LATENTS], t[IMAGE_EMBEDDINGS], t[ADDED_TIME_IDS])
        synchronize(self.device)
        return time.perf_counter() - started

    def _step(self, latents, timestep, image_latents, image_embeddings, added_time_ids, guidance_scale, cfg: bool):
        """One iteration of the reference's denoising loop (step 9 of __call__), unchanged."""
        latent_model_input = torch.cat([latents] * 2) if cfg else latents
        noise_pred = self._unet(latent_model_input, timestep, image_latents, image_embeddings, added_time_ids)
        if cfg:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)
        return self.scheduler.step(noise_pred, timestep, latents).prev_sample

    def _half_step(self, latents, timestep, step: int, image_latents, image_embeddings, added_time_ids, guidance_scale):
        """_step for one guidance half: the UNet on our half of the batch (batch B, where diffusers
        runs 2B), the partner's prediction swapped in, then the same guidance and scheduler step."""
        own = self._unet(latents, timestep, image_latents, image_embeddings, added_time_ids)
        other = self.pair.exchange(NOISE_PRED, own, step)
        noise_pred_uncond, noise_pred_cond = (own, other) if self.guidance_half == 0 else (other, own)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)
        return self.scheduler.step(noise_pred, timestep, latents).prev_sample

    def _unet(self, latent_model_input, timestep, image_latents, image_embeddings, added_time_ids):
        """The noise prediction, as the reference computes it: scale the input for the scheduler,
        concatenate the image latents on the channel axis, run the UNet."""
        latent_model_input = self.scheduler.scale_model_input(latent_model_input, timestep)
        latent_model_input = torch.cat([latent_model_input, image_latents], dim=2)
        return self.unet(
            latent_model_input,
            timestep,
            encoder_hidden_states=image_embeddings,
            added_time_ids=added_time_ids,
            return_dict=False,
        )[0]

    def split_guidance(self, half: int, pair=None) -> None:
        if not self.encode_with_cfg:
            raise ConfigError(
                f"--strategy cfg: --max-guidance-scale {self.config.svd.max_guidance_scale:g} <= 1 turns guidance off: "
                "nothing to split"
            )
        self.guidance_half = half
        self.pair = pair

    def pair_schema(self) -> Schema:
        shape = LatentShape(*self.config.job.latent_shape)
        specs = [TensorSpec(NOISE_PRED, dtype_name(self.dtype), shape.handoff())]
        if self.is_last:  # the last stage has the VAE: its decoded frames have the model's pixel size
            height, width = self.pixel_size
            specs.append(TensorSpec(FRAMES, "uint8", (shape.b * shape.f, height, width, 3)))
        return {spec.name: spec for spec in specs}

    # -- last stage ----------------------------------------------------------------------------
    def finalize(self, sample: Sample) -> SampleResult:
        if self.guidance_half is not None:
            return self._finalize_half(sample)
        latents = sample.tensors[LATENTS]
        _, _, f, _, _ = self.config.job.latent_shape
        chunk = self.config.svd.decode_chunk_size or f
        with torch.no_grad():
            frames = self.pipe.decode_latents(latents, f, chunk)  # [B, 3, F, H, W], float32
            # output_type "pt" stops where "np" would copy float32 frames to the host: the same
            # denormalized values, still on the device, [B, F, 3, H, W].
            video = self.pipe.video_processor.postprocess_video(video=frames, output_type="pt")
            # The uint8 conversion on the device too, so one uint8 copy (a quarter of the bytes)
            # leaves it, and the compute loop spends no host time on float math; the same
            # float32 operations as frames_to_uint8, so the same bytes (round half to even in both).
            pixels = frames_to_uint8(video.permute(0, 1, 3, 4, 2)).cpu()  # [B, F, H, W, 3]
        return SampleResult(
            index=sample.index,
            latents=latents.cpu(),  # the frames' copy has waited for the device already; the writer thread will not
            frames=pixels,
            meta=dict(sample.meta),
        )

    def _finalize_half(self, sample: Sample) -> SampleResult:
        """A guidance pair's decode: the B x F latent frames cut at a decode_chunk_size boundary
        (planning.ranks.decode_split), each half decoding its chunks with diffusers' decode_latents exactly
        as the whole would be (chunks are decoded independently); the conditional half sends its
        uint8 frames to the unconditional half, which returns the whole video."""

        latents = sample.tensors[LATENTS]
        b, _, f, _, _ = self.config.job.latent_shape
        height, width = self.pixel_size
        chunk = self.config.svd.decode_chunk_size or f
        rows = b * f
        cut = decode_split(rows, chunk)
        mine = range(0, cut) if self.guidance_half == 0 else range(cut, rows)
        pixels = self._decode_rows(latents, mine, chunk)
        if self.guidance_half == 1:
            if len(mine):
                self.pair.send(FRAMES, pixels, sample.index)
            return SampleResult(index=sample.index, latents=latents.cpu(), frames=None, meta=dict(sample.meta))
        if cut < rows:
            theirs = self.pair.recv(FRAMES, (rows - cut, height, width, 3), torch.uint8, sample.index)
            pixels = torch.cat([pixels, theirs])
        return SampleResult(
            index=sample.index,
            latents=latents.cpu(),
            frames=pixels.reshape(b, f, height, width, 3),
            meta=dict(sample.meta),
        )

    def _decode_rows(self, latents: torch.Tensor, rows: range, chunk: int) -> torch.Tensor:
        """uint8 frames [len(rows), H, W, 3] of these rows of the flattened B x F latent frames,
        with finalize's operations (rows.start must be a chunk boundary, so the chunks are the same)."""
        height, width = self.pixel_size
        if not len(rows):
            return torch.empty((0, height, width, 3), dtype=torch.uint8)
        part = latents.flatten(0, 1)[rows.start : rows.stop].unsqueeze(0)  # [1, rows, C, H, W]
        with torch.no_grad():
            frames = self.pipe.decode_latents(part, len(rows), chunk)  # [1, 3, rows, H, W]
            video = self.pipe.video_processor.postprocess_video(video=frames, output_type="pt")
            return frames_to_uint8(video.permute(0, 1, 3, 4, 2))[0].cpu()

    def throwaway_sample(self) -> Sample:
        """A random state with the real per-frame guidance scale: guidance above 1 doubles the
        UNet's batch (classifier-free guidance), so a calibration step must see it too."""
        sample = super().throwaway_sample()
        b, _, f, _, _ = self.config.job.latent_shape
        scale = frame_guidance(self.config.svd, f)
        sample.tensors[GUIDANCE_SCALE] = scale.reshape(1, f, 1, 1, 1).repeat(b, 1, 1, 1, 1).to(self.device, self.dtype)
        return sample

    def describe(self) -> dict[str, Any]:
        modules = {"unet": self.unet, "vae": self.vae, "image_encoder": self.pipe.image_encoder}
        info: dict[str, Any] = {
            "model": self.config.model.model,
            "source": self.source,
            "weights": "seeded random" if self.source in ("tiny", "random") else "pretrained",
            "dtype": self.config.model.resolved_dtype,
            "components": list(self.components),
            "parameters": {name: _count(m) for name, m in modules.items() if m is not None},
            "classifier_free_guidance": self.encode_with_cfg,
            "scheduler": type(self.scheduler).__name__,
        }
        if self.source == "random":
            info["architecture"] = "SVD-XT (configs shipped in ppsvd)"
        if self.compiled is not None:
            info["compiled"] = self.compiled
        if self.vae is not None:
            info["pixel_size"] = list(self.pixel_size)
        return info

    # -- launcher check ------------------------------------------------------------------------
    @staticmethod
    def preflight(config: RunConfig) -> None:
        """Everything that can fail fast before workers start: images, model files, shapes.

        Reads only small files (configs, image headers and pixels); imports neither diffusers nor
        transformers, so a bad flag costs well under a second.
        """
        check_images(config)
        unet_config, vae_config = model_configs(config)
        check_shapes(config, unet_config, vae_config)


# -- preflight helpers ---------------------------------------------------------------------------


def check_images(config: RunConfig) -> None:
    """Every image a sample will use exists and decodes (InputImageError otherwise)."""
    if not config.job.input_images:
        return
    for path in dict.fromkeys(spec.image for spec in plan_samples(with_images_resolved(config))):
        check_image(path)


def model_configs(config: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(unet config, vae config) of the model a run will load; ModelNotFoundError if absent."""
    source = model_source(config)
    if source == "tiny":
        return shipped.load_config(shipped.TINY, "unet"), shipped.load_config(shipped.TINY, "vae")
    if source == "random":
        return shipped.load_config(shipped.SVD_XT, "unet"), shipped.load_config(shipped.SVD_XT, "vae")
    model = config.model.model
    if source == "local" and hub.model_root(model, source) is None:
        raise ModelNotFoundError(
            f"--model {model}: no such directory; pass an existing model directory, a hub id like "
            f"{DEFAULT_MODEL_ID} (looked up in the cache {hub.hub_cache_dir()}), or 'tiny'"
        )
    revision = config.model.revision if source == "hub" else None
    missing = hub.missing_files(model, source, revision=revision)
    if missing:
        if source == "local":
            raise ModelNotFoundError(
                f"--model {model}: the directory lacks {', '.join(missing)}; point --model at a complete SVD "
                f"model folder (model_index.json, unet/, vae/, image_encoder/, feature_extractor/, scheduler/), "
                f"e.g. one made by `{predownload_command(DEFAULT_MODEL_ID)} --local-dir {model}`"
            )
        _fetch_configs_or_fail(model, missing, revision)
    else:
        _check_variant(config, source)
    return _read_json(model, source, CONFIG_FILES["unet"], revision), _read_json(
        model, source, CONFIG_FILES["vae"], revision
    )


def _check_variant(config: RunConfig, source: str) -> None:
    """--variant on a model whose weights are all on disk: every weighted component must have it."""
    if config.model.variant is None:
        return
    lacking = [name for name in WEIGHT_FILES if not _on_disk(config, source, name, config.model.variant)]
    if lacking:
        raise ModelNotFoundError(
            f"--variant {config.model.variant}: {config.model.model} has no {config.model.variant} weights for "
            f"{', '.join(lacking)} "
            f"(no {hub.variant_name(WEIGHT_FILES[lacking[0]][0], config.model.variant)} in {lacking[0]}/); "
            "drop --variant to load the weights that are there"
        )


def _fetch_configs_or_fail(model: str, missing: list[str], revision: str | None = None) -> None:
    """A hub model not fully in the cache: an error when offline; when online, fetch the small
    configs now (so a wrong id or revision fails here, in one line) and leave the weights to the workers."""
    cache = hub.hub_cache_dir()
    fetch = predownload_command(model, revision=revision)
    at = f" at revision {revision}" if revision else ""
    if hub.hub_offline():
        raise ModelNotFoundError(
            f"--model {model}{at}: {_describe_missing(missing)} the Hugging Face cache {cache} (and no directory of "
            "that "
            f"name exists), and HF_HUB_OFFLINE forbids downloading; "
            f"fetch it first with `{fetch}` (or unset HF_HUB_OFFLINE)"
        )
    from huggingface_hub import hf_hub_download  # heavy: about 0.4 s, only to fetch configs

    try:
        for rel in CONFIG_FILES.values():
            hf_hub_download(model, rel, cache_dir=cache, revision=revision)
    except Exception as exc:  # any hub failure (unknown repo or revision, gated, no network) ends the same way
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(
            f"--model {model}{at}: {_describe_missing(missing)} the Hugging Face cache {cache} (and no directory of "
            "that "
            f"name exists), and the Hub did not provide it ({reason}); check the id, or fetch it first with `{fetch}`"
        ) from None


def _read_json(model: str, source: str, relpath: str, revision: str | None = None) -> dict[str, Any]:

    path = hub.find(model, source, relpath, revision=revision)
    if path is None:  # fetched configs are in the cache now; anything else was reported above
        raise ModelNotFoundError(
            f"--model {model}: {relpath} is missing; fetch the model with "
            f"`{predownload_command(model, revision=revision)}`"
        )
    return json.loads(Path(path).read_text())


def frame_guidance(svd: SvdSection, frames: int) -> torch.Tensor:
    """diffusers' per-frame guidance scale: min_guidance_scale to max_guidance_scale over the frames."""
    return torch.linspace(svd.min_guidance_scale, svd.max_guidance_scale, frames)


def check_shapes(config: RunConfig, unet_config: dict[str, Any], vae_config: dict[str, Any]) -> None:
    """The latent shape fits the model, and the pixel size passes diffusers' check_inputs."""
    b, c, f, h, w = config.job.latent_shape
    shape = " ".join(map(str, config.job.latent_shape))
    channels = unet_config.get("out_channels", 4)
    if (
        c != channels
        or unet_config.get("in_channels", 2 * channels) != 2 * c
        or vae_config.get("latent_channels", c) != c
    ):
        raise ConfigError(
            f"--latent-shape {shape}: C={c} but {config.model.model}'s latents have {channels} channels; "
            f"use --latent-shape {b} {channels} {f} {h} {w}"
        )
    refusal = pixels.latent_shape_refusal(
        config.job.latent_shape, pixels.vae_scale_factor(vae_config), config.model.model
    )
    if refusal is not None:
        raise ConfigError(refusal)
    if f == 1 and config.svd.min_guidance_scale <= 1 < config.svd.max_guidance_scale:
        # diffusers encodes with CFG (max > 1) but its one-frame scale is min: the shapes disagree.
        raise ConfigError(
            f"--latent-shape {shape} has one frame, and with --min-guidance-scale {config.svd.min_guidance_scale} <= 1 "
            "< "
            f"--max-guidance-scale {config.svd.max_guidance_scale} diffusers' SVD cannot run it; "
            "use F >= 2 or set both guidance scales on the same side of 1"
        )


def compile_unet(unet: torch.nn.Module) -> str:
    """torch.compile the UNet in place (--compile) and say how: regional compilation of the blocks
    diffusers lists as repeated for this model class (ModelMixin.compile_repeated_blocks), when it
    lists any; otherwise the whole UNet (nn.Module.compile; diffusers 0.42 lists none for SVD's
    UNetSpatioTemporalConditionModel). Default torch.compile settings (inductor, no CUDA graphs)."""
    blocks = getattr(unet, "_repeated_blocks", None)
    if blocks and hasattr(unet, "compile_repeated_blocks"):
        unet.compile_repeated_blocks()
        return f"regional ({', '.join(blocks)})"
    unet.compile()
    return "whole UNet"


def frames_to_uint8(video: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Float frames in [0, 1] -> uint8, rounding as diffusers' numpy_to_pil does for output_type='pil'.

    A torch tensor stays on its device: float32 x 255 and round-half-to-even give the same bytes
    as numpy's."""
    if isinstance(video, torch.Tensor):
        return (video * 255).round().to(torch.uint8)
    return (video * 255).round().astype(np.uint8)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
