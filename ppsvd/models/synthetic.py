"""A deterministic CPU stand-in for the SVD UNet, for machines without GPUs.

It keeps what matters for the pipeline and drops the network:
- the scheduler is diffusers' EulerDiscreteScheduler configured exactly as SVD's, and each
  stage starts it at its own first step (set_begin_index), so the step -> sigma mapping of
  every stage is exercised as in the real model;
- the "noise prediction" is a cheap nonlinear function of the latent, the conditioning and
  the timestep, so the result changes if any step is skipped, repeated or reordered;
- each step costs --step-ms of wall time *without using the CPU* (a sleep, like waiting for
  a GPU kernel), so scaling over N stages can be measured on a 2-core machine.

The cost is a wall-clock budget: a stage spends exactly len(steps) x step_ms on a sample, and
the stand-in's own CPU work for that sample (making the initial noise, the math, scheduler
set-up) is counted inside that budget, as host work overlaps queued kernels on a GPU. So stage
costs are exactly proportional to their step counts, and what a benchmark measures beyond that
is the pipeline's own overhead.
"""

from __future__ import annotations

import os
import signal
import time
from importlib import resources

import torch

from ppsvd.models.base import Sample, SampleResult, StageModel, StepCallback, torch_dtype
from ppsvd.backends.protocol import Schema, TensorSpec, dtype_name


def svd_scheduler():
    """diffusers' EulerDiscreteScheduler with SVD-XT's scheduler config (shipped in the package)."""
    from diffusers import EulerDiscreteScheduler

    config_dir = resources.files("ppsvd.models").joinpath("configs/svd-xt/scheduler")
    with resources.as_file(config_dir) as path:
        return EulerDiscreteScheduler.from_pretrained(str(path))


class SyntheticStageModel(StageModel):
    def __init__(self, config, plan, stage, device) -> None:
        super().__init__(config, plan, stage, device)
        self.dtype = torch_dtype(config.resolved_dtype)
        self.scheduler = svd_scheduler()
        b, c, f, h, w = config.latent_shape
        self.state_shape = (b, f, c, h, w)  # diffusers layout [B, F, C, H, W]
        self.step_s = config.step_ms / 1000.0
        self.fault = _parse_fault(os.environ.get(FAULT_ENV, ""), stage)
        self._budget_start: float | None = None

    def schema(self) -> Schema:
        spec = TensorSpec("latents", dtype_name(self.dtype), self.state_shape)
        cond = TensorSpec("image_latents", dtype_name(self.dtype), self.state_shape)
        return {spec.name: spec, cond.name: cond}

    def prepare(self, index: int) -> Sample:
        self._budget_start = time.perf_counter()  # preparing counts inside the first steps' budget
        generator = torch.Generator("cpu").manual_seed(self.config.seed + index)
        image_latents = torch.randn(self.state_shape, generator=generator, dtype=torch.float32)
        self.scheduler.set_timesteps(self.config.total_steps)
        latents = torch.randn(self.state_shape, generator=generator, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        tensors = {
            "latents": latents.to(self.device, self.dtype),
            "image_latents": image_latents.to(self.device, self.dtype),
        }
        return Sample(index=index, tensors=tensors, meta={"seed": self.config.seed + index})

    def run_steps(self, sample: Sample, steps: range, on_step: StepCallback | None = None) -> Sample:
        if not steps:
            return sample
        begin = self._budget_start if self._budget_start is not None else time.perf_counter()
        self._budget_start = None
        scheduler = self.scheduler
        scheduler.set_timesteps(self.config.total_steps, device=self.device)
        scheduler.set_begin_index(steps.start)
        if self.fault is not None and self.fault[0] == sample.index:
            _inject(self.fault[1], self.stage, sample.index)
        latents = sample.tensors["latents"]
        cond = sample.tensors["image_latents"]
        for done, step in enumerate(steps, start=1):
            t = scheduler.timesteps[step]
            model_input = scheduler.scale_model_input(latents, t)
            noise_pred = torch.tanh(model_input + 0.1 * cond + torch.sin(t.to(latents.dtype) * (step + 1)))
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            _sleep_until(begin + done * self.step_s)  # fixed deadlines: no drift from overshoot
            if on_step is not None:
                on_step(step)
        return Sample(index=sample.index, tensors={**sample.tensors, "latents": latents}, meta=sample.meta)

    def finalize(self, sample: Sample) -> SampleResult:
        return SampleResult(index=sample.index, latents=sample.tensors["latents"], meta=dict(sample.meta))

    def describe(self) -> dict:
        return {"model": "synthetic", "step_ms": self.config.step_ms, "scheduler": "EulerDiscreteScheduler (SVD-XT config)"}


FAULT_ENV = "PPSVD_FAULT"
"""Test hook: 'STAGE:SAMPLE:KIND' makes that stage fail when it reaches that sample.
KIND is raise (an exception), kill (SIGKILL itself), exit0 (leave quietly with code 0) or hang."""


def _parse_fault(spec: str, stage: int) -> tuple[int, str] | None:
    if not spec:
        return None
    fault_stage, sample, kind = spec.split(":")
    return (int(sample), kind) if int(fault_stage) == stage else None


def _inject(kind: str, stage: int, index: int) -> None:
    import sys

    print(f"ppsvd: injecting fault {kind!r} in stage {stage} at sample {index} at {time.time():.3f}", file=sys.stderr, flush=True)
    if kind == "raise":
        raise RuntimeError(f"injected fault at sample {index}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit0":
        os._exit(0)
    if kind == "hang":
        time.sleep(3600)
    raise ValueError(f"{FAULT_ENV}: unknown fault kind {kind!r} (raise, kill, exit0, hang)")


def _sleep_until(deadline: float) -> None:
    """Sleep (not spin) until the perf_counter deadline; return at once if it has passed."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
