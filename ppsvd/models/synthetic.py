"""A deterministic CPU stand-in for the SVD UNet, for machines without GPUs.

It keeps what matters for the pipeline and drops the network:
- the scheduler is diffusers' EulerDiscreteScheduler configured exactly as SVD's, and each
  stage starts it at its own first step (set_begin_index), so the step -> sigma mapping of
  every stage is exercised as in the real model;
- the "noise prediction" is a cheap nonlinear function of the latent, the conditioning and
  the timestep, so the result changes if any step is skipped, repeated or reordered;
- each step costs --step-ms of wall time *without using the CPU* (a sleep, like waiting for
  a GPU kernel), so scaling over N stages can be measured on a 2-core machine;
- stage 0 spends --encode-ms preparing each sample and the last stage --decode-ms finishing it
  (SVD's image encode and VAE decode), the same way; --stage-speed divides all of a stage's
  costs by its device's relative speed (mixed GPUs);
- with guidance on (--max-guidance-scale > 1) the prediction is a guided mix of an
  "unconditional" and a "conditional" part, combined with diffusers' per-frame scale, so a
  guidance pair (--strategy cfg) splits it like SVD's: each half computes its part in
  --cfg-half-ms, they swap the real latent-sized tensors, and the last pair splits the decode.

The cost is a wall-clock budget: a stage spends exactly len(steps) x step_ms on a sample, and
the stand-in's own CPU work for that sample (making the initial noise, the math, scheduler
set-up) is counted inside that budget, as host work overlaps queued kernels on a GPU. So stage
costs are exactly proportional to their step counts, and what a benchmark measures beyond that
is the pipeline's own overhead. declared_costs() states these costs as a ppsvd.planning.costs.CostModel,
so `--partition auto` plans with exactly what the stand-in will spend.
"""

from __future__ import annotations

import os
import time

import torch

from ppsvd.backends.protocol import Schema, TensorSpec, dtype_name
from ppsvd.errors import ConfigError
from ppsvd.io.samples import plan_samples, sample_spec
from ppsvd.models.base import Sample, SampleResult, StageModel, StepCallback, torch_dtype
from ppsvd.models.faults import AT_START, fault_for
from ppsvd.models.shipped import SVD_XT, config_dir
from ppsvd.planning.costs import CostModel
from ppsvd.planning.ranks import decode_split
from ppsvd.shapes import LatentShape


def svd_scheduler():
    """diffusers' EulerDiscreteScheduler with SVD-XT's scheduler config (shipped in the package)."""
    from diffusers import EulerDiscreteScheduler  # heavy: diffusers

    with config_dir(SVD_XT, "scheduler") as path:
        return EulerDiscreteScheduler.from_pretrained(str(path))


class SyntheticStageModel(StageModel):
    def __init__(self, config, plan, stage, device) -> None:
        super().__init__(config, plan, stage, device)
        self.dtype = torch_dtype(config.model.resolved_dtype)
        self.scheduler = svd_scheduler()
        self.state_shape = LatentShape(*config.job.latent_shape).handoff()
        speed = device_speed(config, stage)
        self.step_s = config.synthetic.step_ms / 1000.0 / speed
        self.encode_s = config.synthetic.encode_ms / 1000.0 / speed if self.is_first else 0.0
        self.decode_s = config.synthetic.decode_ms / 1000.0 / speed if self.is_last else 0.0
        self.fault = fault_for(config, stage)
        if self.fault is not None:
            self.fault.fail(stage, AT_START)
        self._budget_start: float | None = None
        self.names = [spec.name for spec in plan_samples(config)] if self.is_first else []
        self.speed = speed
        # diffusers' per-frame guidance scale, in the hand-off layout B F C H W; None without guidance.
        _, _, f, _, _ = config.job.latent_shape
        self.guidance = (
            torch.linspace(config.svd.min_guidance_scale, config.svd.max_guidance_scale, f)
            .reshape(1, f, 1, 1, 1)
            .to(device, self.dtype)
            if config.svd.max_guidance_scale > 1
            else None
        )

    def split_guidance(self, half: int, pair=None) -> None:
        if self.guidance is None:
            raise ConfigError(
                f"--strategy cfg: --max-guidance-scale {self.config.svd.max_guidance_scale:g} <= 1 turns guidance off: "
                "nothing to split"
            )
        self.guidance_half = half
        self.pair = pair
        self.step_s = self.config.synthetic.resolved_cfg_half_ms / 1000.0 / self.speed

    def pair_schema(self) -> Schema:
        spec = TensorSpec("noise_pred", dtype_name(self.dtype), self.state_shape)
        return {spec.name: spec}

    def schema(self) -> Schema:
        spec = TensorSpec("latents", dtype_name(self.dtype), self.state_shape)
        cond = TensorSpec("image_latents", dtype_name(self.dtype), self.state_shape)
        return {spec.name: spec, cond.name: cond}

    @staticmethod
    def declared_costs(config) -> CostModel:
        """What this stand-in spends (see the module docstring): exact, so no need to measure."""
        return CostModel.from_ms(
            config.synthetic.step_ms,
            config.synthetic.encode_ms,
            config.synthetic.decode_ms,
            config.synthetic.stage_speed,
            source="synthetic model's --step-ms/--encode-ms/--decode-ms/--stage-speed",
        )

    def prepare(self, index: int, spec=None) -> Sample:
        # Preparing counts inside the encode budget, or inside the first steps' when there is none.
        started = time.perf_counter()
        seed = self.config.job.seed + index if spec is None else spec.seed
        generator = torch.Generator("cpu").manual_seed(seed)
        image_latents = torch.randn(self.state_shape, generator=generator, dtype=torch.float32)
        self.scheduler.set_timesteps(self.config.job.total_steps)
        latents = torch.randn(self.state_shape, generator=generator, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        tensors = {
            "latents": latents.to(self.device, self.dtype),
            "image_latents": image_latents.to(self.device, self.dtype),
        }
        if self.encode_s:
            _sleep_until(started + self.encode_s)
            started += self.encode_s
        self._budget_start = started
        return Sample(
            index=index,
            tensors=tensors,
            meta=(
                {
                    "seed": seed,
                    "name": self.names[index] if index < len(self.names) else sample_spec(self.config, index).name,
                }
                if spec is None
                else spec.conditioning()  # a service's job: the stand-in reads no image, but its facts travel
            ),
        )

    def run_steps(self, sample: Sample, steps: range, on_step: StepCallback | None = None) -> Sample:
        if not steps:
            return sample
        begin = self._budget_start if self._budget_start is not None else time.perf_counter()
        self._budget_start = None
        scheduler = self.scheduler
        scheduler.set_timesteps(self.config.job.total_steps, device=self.device)
        scheduler.set_begin_index(steps.start)
        if self.fault is not None:
            self.fault.fail(self.stage, sample.index)
        latents = sample.tensors["latents"]
        cond = sample.tensors["image_latents"]
        for done, step in enumerate(steps, start=1):
            t = scheduler.timesteps[step]
            model_input = scheduler.scale_model_input(latents, t)
            wave = torch.sin(t.to(latents.dtype) * (step + 1))
            if self.guidance is None:
                noise_pred = torch.tanh(model_input + 0.1 * cond + wave)
            else:
                noise_pred = self._guided(model_input, cond, wave, step)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            _sleep_until(begin + done * self.step_s)  # fixed deadlines: no drift from overshoot
            if on_step is not None:
                on_step(step)
        if self.fault is not None:
            latents = self.fault.perturb(latents, self.stage, sample.index)
        return Sample(index=sample.index, tensors={**sample.tensors, "latents": latents}, meta=sample.meta)

    def _guided(self, model_input, cond, wave, step: int):
        """The stand-in's classifier-free guidance: an unconditional part (no conditioning) and a
        conditional one, mixed as diffusers does; a guidance half computes its part and swaps."""
        half = self.guidance_half
        uncond = torch.tanh(model_input + wave) if half != 1 else None
        conditional = torch.tanh(model_input + 0.1 * cond + wave) if half != 0 else None
        if half == 0:
            conditional = self.pair.exchange("noise_pred", uncond, step)
        elif half == 1:
            uncond = self.pair.exchange("noise_pred", conditional, step)
        return uncond + self.guidance * (conditional - uncond)

    def finalize(self, sample: Sample) -> SampleResult:
        started = time.perf_counter()
        latents = sample.tensors["latents"]
        result = SampleResult(index=sample.index, latents=latents, meta=dict(sample.meta))
        if self.guidance_half is None:
            _sleep_until(started + self.decode_s)
            return result
        # A guidance pair's split decode (as SVD's, planning.ranks.decode_split): each half spends
        # its rows' share of --decode-ms; the conditional half's "frames" (its rows of the latent)
        # go to the unconditional half, which waits for them like for real frames.
        b, _, f, _, _ = self.config.job.latent_shape
        rows = b * f
        cut = decode_split(rows, self.config.svd.decode_chunk_size or f)
        mine = cut if self.guidance_half == 0 else rows - cut
        _sleep_until(started + self.decode_s * mine / rows)
        part = latents.flatten(0, 1)
        if self.guidance_half == 1:
            if mine:
                self.pair.send("frames", part[cut:].contiguous(), sample.index)
            return SampleResult(index=sample.index, latents=latents, meta=dict(sample.meta))
        if cut < rows:
            self.pair.recv("frames", tuple(part[cut:].shape), part.dtype, sample.index, device=latents.device)
        return result

    def describe(self) -> dict:
        c = self.config
        facts = {
            "model": "synthetic",
            "weights": "none (a stand-in function)",
            "step_ms": c.synthetic.step_ms,
            "scheduler": "EulerDiscreteScheduler (SVD-XT config)",
        }
        if c.synthetic.encode_ms or c.synthetic.decode_ms or c.synthetic.stage_speed:
            facts.update(
                encode_ms=c.synthetic.encode_ms,
                decode_ms=c.synthetic.decode_ms,
                stage_speed=list(c.synthetic.stage_speed),
            )
        return facts


def device_speed(config, stage: int) -> float:
    """--stage-speed of this process's device. The list describes devices, i.e. ranks: a pipeline
    stage is its rank, while every data-parallel worker runs "stage 0", so it reads its RANK."""
    if not config.synthetic.stage_speed:
        return 1.0
    rank = int(os.environ["RANK"]) if "RANK" in os.environ else stage
    return config.synthetic.stage_speed[rank]


def _sleep_until(deadline: float) -> None:
    """Sleep (not spin) until the perf_counter deadline; return at once if it has passed."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
