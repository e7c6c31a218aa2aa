"""What a stage runs: one contract, several implementations (synthetic, SVD).

A StageModel is built per stage with only the parts that stage needs. Stage 0 turns a sample
index into its initial state (`prepare`); every stage advances the state through its own
steps (`run_steps`); the last stage turns the final state into outputs (`finalize`). The state
is a set of named tensors that travels between stages unchanged in layout (`schema`).
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from ppsvd.backends.protocol import DTYPE_NAMES, KIND_SAMPLE, Message, Schema
from ppsvd.config import SYNTHETIC_MODEL, TINY_MODEL, RunConfig
from ppsvd.environment import env_world
from ppsvd.errors import ConfigError
from ppsvd.io.samples import SampleSpec
from ppsvd.models import memory
from ppsvd.planning.costs import CostModel
from ppsvd.planning.steps import StepPlan

StepCallback = Callable[[int], None]
"""Called after each denoising step with the global step index (for progress bars)."""


@dataclass
class Sample:
    """One sample's state between steps: named tensors plus small JSON-able facts."""

    index: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> Message:
        return Message(kind=KIND_SAMPLE, index=self.index, tensors=self.tensors, meta=self.meta)

    @staticmethod
    def from_message(msg: Message, device: torch.device | str) -> Sample:
        tensors = {name: t.to(device, non_blocking=True) for name, t in msg.tensors.items()}
        return Sample(index=msg.index, tensors=tensors, meta=dict(msg.meta))


@dataclass
class SampleResult:
    """What the last stage produces for one sample."""

    index: int
    latents: torch.Tensor
    """Final latent, diffusers layout [B, F, C, H, W]."""
    frames: torch.Tensor | None = None
    """Decoded video, uint8 [B, F, H, W, 3], or None for models that do not decode."""
    meta: dict[str, Any] = field(default_factory=dict)


class StageModel(ABC):
    """The computation of one stage. Implementations load only what `stage` needs."""

    def __init__(self, config: RunConfig, plan: StepPlan, stage: int, device: torch.device) -> None:
        self.config = config
        self.plan = plan
        self.stage = stage
        self.device = device

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.plan.num_stages - 1

    @abstractmethod
    def schema(self) -> Schema:
        """Names, dtypes and shapes of the tensors in every hand-off (checked on receipt)."""

    @abstractmethod
    def prepare(self, index: int, spec: SampleSpec | None = None) -> Sample:
        """Stage 0: the initial state of sample `index` (seed + index; never depends on N), or of
        the sample `spec` describes (a service's job: its own image, seed and conditioning)."""

    @abstractmethod
    def run_steps(self, sample: Sample, steps: range, on_step: StepCallback | None = None) -> Sample:
        """Advance the sample through the given global step indices, in order."""

    @abstractmethod
    def finalize(self, sample: Sample) -> SampleResult:
        """Last stage: the outputs of a fully denoised sample."""

    guidance_half: int | None = None
    """Guidance-parallel stages (ppsvd.runtime.cfg): which half of the CFG batch this rank runs
    (0 unconditional, 1 conditional); None: both, as diffusers does."""
    pair: Any = None
    """The link to the guidance partner: exchange(name, tensor, index), send(...), recv(...)."""

    def split_guidance(self, half: int, pair: Any = None) -> None:
        """Run only one half of the guidance batch from now on (before schema() is asked), and
        swap noise predictions with the partner through `pair` (which may be set later)."""

        raise ConfigError(
            f"--strategy cfg: the {self.config.model.model} model cannot split classifier-free guidance; use pipeline "
            "or data"
        )

    def pair_schema(self) -> Schema:
        """The largest messages between guidance partners (a noise prediction; frames of the decode)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Facts for the manifest (model id, parameter counts, ...)."""
        return {"model": self.config.model.model}

    def warm_up(self) -> float | None:
        """Run the stage's network once on a throwaway input before the run starts, so one-time work
        (torch.compile's compilation with --compile) is done and timed apart from the samples.
        Returns the seconds it took, or None for a model with nothing to warm up."""
        return None

    @staticmethod
    def loading_text(config: RunConfig, is_first: bool, is_last: bool) -> str:
        """What a stage is loading, for the progress display while it loads."""
        return f"loading {config.model.model}"

    @staticmethod
    def declared_costs(config: RunConfig) -> CostModel | None:
        """The model's costs when they are known without measuring (the synthetic stand-in's);
        None: `--partition auto` measures them at the start of the run (ppsvd.runtime.calibration)."""
        return None

    def throwaway_sample(self) -> Sample:
        """A sample-shaped input for timing this stage's work before the run (ppsvd.runtime.calibration).

        Drawn from its own generator, so no sample's random numbers are touched; models whose cost
        depends on the values (SVD: guidance > 1 doubles the UNet batch) override it."""
        generator = torch.Generator("cpu").manual_seed(0)
        tensors = {
            name: torch.randn(spec.shape, generator=generator).to(self.device, DTYPE_NAMES[spec.dtype])
            for name, spec in self.schema().items()
        }
        return Sample(index=-1, tensors=tensors, meta={})


def synchronize(device) -> None:
    """Wait for the device's queued work, so a timing covers the work and not only its launch
    (CUDA kernels run asynchronously; on the CPU there is nothing to wait for)."""
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


_IMPLEMENTATIONS: dict[str, str] = {
    SYNTHETIC_MODEL: "ppsvd.models.synthetic:SyntheticStageModel",
    TINY_MODEL: "ppsvd.models.svd:SVDStageModel",  # the small SVD of ppsvd.models.tiny
}
_DEFAULT_IMPLEMENTATION = "ppsvd.models.svd:SVDStageModel"


def model_class(config: RunConfig) -> type[StageModel]:
    """The StageModel class for config.model, imported lazily (diffusers is heavy)."""
    target = _IMPLEMENTATIONS.get(config.model.model, _DEFAULT_IMPLEMENTATION)
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_stage_model(config: RunConfig, plan: StepPlan, stage: int, device: torch.device) -> StageModel:
    return model_class(config)(config, plan, stage, device)


def loading_phase(config: RunConfig, plan: StepPlan, stage: int) -> str:
    """The progress phase of a stage while it builds its model ('loading unet, scheduler, vae ...')."""
    return model_class(config).loading_text(config, stage == 0, stage == plan.num_stages - 1)


def preflight(config: RunConfig) -> None:
    """Checks that need the model (files present, shapes compatible, images readable).

    Run in the launching process before any worker starts, so bad input costs one line, not a
    long load. Raises ConfigError subclasses.
    """
    cls = model_class(config)
    check = getattr(cls, "preflight", None)
    if check is not None:
        check(config)
    check_memory(config)


def check_memory(config: RunConfig) -> None:
    """Refuse a latent shape that cannot fit in free memory (ConfigError naming the largest that
    does), before workers spend time loading. Only where the free memory is known without
    touching the GPUs: host memory on CPU, NVML on CUDA; under torchrun each host may differ, so
    the stages find out themselves."""

    if env_world() is not None:
        return
    capacity, labels = _free_memory(config)
    if not capacity:
        return
    problem = memory.fit_refusal(
        config.model.model,
        config.model.resolved_dtype,
        config.job.latent_shape,
        config.layout.nproc,
        config.model.device,
        capacity,
        labels,
        config.svd.decode_chunk_size,
        stages_per_device=config.layout.stages_per_gpu if config.model.device == "cuda" else 1,
    )
    if problem:
        raise ConfigError(problem)


def _free_memory(config: RunConfig) -> tuple[list[int], list[str]]:
    """Free bytes per device the stages use (stage k on device k // --stages-per-gpu), or ([], []) when unknown."""

    if config.model.device == "cpu":
        try:
            return [int(psutil.virtual_memory().available)], ["this host (all stages together)"]
        except Exception:
            return [], []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        return [], []  # UUIDs or MIG instances: doctor maps those; the stages will see for themselves
    try:
        import pynvml  # inside the try: a failed import counts as no NVML, like a failed init

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            order = [int(p) for p in visible.split(",") if p.strip()] if visible is not None else list(range(count))
            order = [i for i in order if i < count][: config.layout.gpus_needed(config.layout.nproc)]
            free = [int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free) for i in order]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return [], []
    return free, [f"cuda:{k}" for k in range(len(free))]
