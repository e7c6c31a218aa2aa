"""Test-only failure injection: PPSVD_FAULT='STAGE:SAMPLE:KIND' makes that stage misbehave at that sample.

The failure tests set it in a run's environment to check what the rest of the system does:
- raise, kill, exit0, hang: the stage fails loudly (an exception, SIGKILL, a quiet exit 0, a
  hang) when it reaches the sample, or with SAMPLE 'start' while it builds its model, before it
  is ready (tests/test_failures.py, tests/test_serve.py and friends);
- perturb: after its steps of that sample, the stage nudges one element of the latent by 1e-3 of
  the latent's largest magnitude and hands it on, so the output is silently wrong. `ppsvd verify`
  must then fail and name the layout (tests/test_verify.py).

A silent corruption must never reach a user's outputs, so `perturb` is honoured only in the runs
`ppsvd verify` launches (their config carries VERIFY_RUN in `extra`; their outputs are compared
with diffusers' and thrown away): in `ppsvd run`, `simulate` or `bench` it is ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

import torch

from ppsvd.config import RunConfig

FAULT_ENV = "PPSVD_FAULT"
KINDS = ("raise", "kill", "exit0", "hang", "perturb")
AT_START = "start"
"""SAMPLE of a fault that strikes while the stage builds its model (before it is ready)."""
VERIFY_RUN = "verify"
"""The key in RunConfig.extra that marks a run launched by `ppsvd verify` (the only runs a
perturb fault applies to)."""
PERTURBATION = 1e-2
"""perturb: added to one latent element, relative to the latent's largest magnitude: far above
any documented bound, and above fp16's rounding step, so it survives the hand-off."""


@dataclass(frozen=True)
class Fault:
    """The fault this stage was asked to inject, and at which sample."""

    sample: int | str
    """A sample index, or AT_START."""
    kind: str

    def fail(self, stage: int, index: int | str) -> None:
        """raise, kill, exit0 or hang, when this stage reaches the sample (index AT_START: while it
        starts); perturb does nothing here."""
        if index != self.sample or self.kind == "perturb":
            return
        where = "while it starts" if index == AT_START else f"at sample {index}"
        print(
            f"ppsvd: injecting fault {self.kind!r} in stage {stage} {where} at {time.time():.3f}",
            file=sys.stderr,
            flush=True,
        )
        if self.kind == "raise":
            raise RuntimeError(f"injected fault at sample {index}")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "exit0":
            os._exit(0)
        if self.kind == "hang":
            time.sleep(3600)

    def perturb(self, latents: torch.Tensor, stage: int, index: int) -> torch.Tensor:
        """The latent with one element moved by PERTURBATION x its largest magnitude (perturb only)."""
        if index != self.sample or self.kind != "perturb":
            return latents
        print(f"ppsvd: injecting fault 'perturb' in stage {stage} at sample {index}", file=sys.stderr, flush=True)
        nudged = latents.clone()
        flat = nudged.view(-1)
        flat[0] += PERTURBATION * (float(latents.abs().max()) or 1.0)
        return nudged


def fault_for(config: RunConfig, stage: int) -> Fault | None:
    """This stage's fault from PPSVD_FAULT, or None (not set, another stage's, or a perturb
    outside `ppsvd verify`). A malformed value is an error naming the variable."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    try:
        fault_stage, sample, kind = spec.split(":")
        fault = Fault(sample=AT_START if sample == AT_START else int(sample), kind=kind)
        target = int(fault_stage)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r} is not STAGE:SAMPLE:KIND (KIND one of {', '.join(KINDS)})") from None
    if kind not in KINDS:
        raise ValueError(f"{FAULT_ENV}: unknown fault kind {kind!r} ({', '.join(KINDS)})")
    if target != stage:
        return None
    if kind == "perturb" and VERIFY_RUN not in config.extra:
        return None  # never corrupt a real run's outputs
    return fault
