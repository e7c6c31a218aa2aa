"""What a stage runs: one contract, several implementations (synthetic, SVD).

A StageModel is built per stage with only the parts that stage needs. Stage 0 turns a sample
index into its initial state (`prepare`); every stage advances the state through its own
steps (`run_steps`); the last stage turns the final state into outputs (`finalize`). The state
is a set of named tensors that travels between stages unchanged in layout (`schema`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ppsvd.config import SYNTHETIC_MODEL, TINY_MODEL, RunConfig
from ppsvd.plan import StepPlan
from ppsvd.backends.protocol import KIND_SAMPLE, Message, Schema

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
    def prepare(self, index: int) -> Sample:
        """Stage 0: the initial state of sample `index` (seed + index; never depends on N)."""

    @abstractmethod
    def run_steps(self, sample: Sample, steps: range, on_step: StepCallback | None = None) -> Sample:
        """Advance the sample through the given global step indices, in order."""

    @abstractmethod
    def finalize(self, sample: Sample) -> SampleResult:
        """Last stage: the outputs of a fully denoised sample."""

    def describe(self) -> dict[str, Any]:
        """Facts for the manifest (model id, parameter counts, ...)."""
        return {"model": self.config.model}


def torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


_IMPLEMENTATIONS: dict[str, str] = {
    SYNTHETIC_MODEL: "ppsvd.models.synthetic:SyntheticStageModel",
    TINY_MODEL: "ppsvd.models.svd:SVDStageModel",  # the small SVD of ppsvd.models.tiny
}
_DEFAULT_IMPLEMENTATION = "ppsvd.models.svd:SVDStageModel"


def model_class(config: RunConfig) -> type[StageModel]:
    """The StageModel class for config.model, imported lazily (diffusers is heavy)."""
    target = _IMPLEMENTATIONS.get(config.model, _DEFAULT_IMPLEMENTATION)
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_stage_model(config: RunConfig, plan: StepPlan, stage: int, device: torch.device) -> StageModel:
    return model_class(config)(config, plan, stage, device)


def preflight(config: RunConfig) -> None:
    """Checks that need the model (files present, shapes compatible, images readable).

    Run in the launching process before any worker starts, so bad input costs one line, not a
    long load. Raises ConfigError subclasses.
    """
    cls = model_class(config)
    check = getattr(cls, "preflight", None)
    if check is not None:
        check(config)
