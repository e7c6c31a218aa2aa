"""Which layouts `ppsvd verify` runs: the --layouts spec, the defaults for this machine, and the
RunConfig of each. Pure: no torch, no processes.

A spec is STRATEGY:N[:TRANSPORT][:compile], e.g. pipeline:1, pipeline:3:zmq, data:2, cfg:2:gloo,
pipeline:1:compile. On CUDA a layout with more processes than visible GPUs puts several stages on
each (--stages-per-gpu, so gloo or zmq: NCCL refuses two ranks on one device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppsvd.config import TRANSPORTS, RunConfig
from ppsvd.errors import ConfigError
from ppsvd.models.faults import VERIFY_RUN
from ppsvd.verify.bounds import layout_bound

VERIFY_STRATEGIES = ("pipeline", "data", "cfg")
COMPILE_TOKEN = "compile"


@dataclass(frozen=True)
class VerifyLayout:
    """One layout to run and compare: a strategy on N processes, a transport, eager or compiled."""

    strategy: str
    nproc: int
    transport: str | None = None
    """None: the run's default (nccl with one GPU per stage, else gloo)."""
    compile: bool = False

    @property
    def spec(self) -> str:
        """The --layouts spec that gives this layout back (transport as asked)."""
        parts = [self.strategy, str(self.nproc)]
        if self.transport:
            parts.append(self.transport)
        if self.compile:
            parts.append(COMPILE_TOKEN)
        return ":".join(parts)

    def with_compile(self, compile: bool) -> VerifyLayout:
        """This layout, compiled too when `compile` (verify --compile compiles every layout it runs)."""
        return VerifyLayout(self.strategy, self.nproc, self.transport, self.compile or compile)

    @property
    def guidance_split(self) -> bool:
        return self.strategy == "cfg"

    def bound(self, dtype: str) -> float | None:
        """The bound this layout is held to (None: bitwise): ppsvd.verify.bounds."""
        return layout_bound(dtype, guidance_split=self.guidance_split, compiled=self.compile)

    def stages_per_gpu(self, device: str, gpus: int) -> int:
        """On CUDA: 1 when every process has its own GPU, else as many as must share one."""
        if device != "cuda" or gpus <= 0 or self.nproc <= gpus:
            return 1
        return -(-self.nproc // gpus)

    def config(self, base: RunConfig, gpus: int, output_dir: Path) -> RunConfig:
        """The RunConfig of this layout's run: base's model and samples, PNG frames and latents
        (lossless, to compare), no MP4, marked as verify's run (models/faults.py)."""
        name = self.spec.replace(":", "-")
        return base.replace(
            nproc=self.nproc,
            strategy=self.strategy,
            transport=self.transport,
            compile=self.compile,
            stages_per_gpu=self.stages_per_gpu(base.model.device, gpus),
            output_dir=Path(output_dir) / name,
            save_frames=True,
            save_video=False,
            save_latents=True,
            show_progress=False,
            extra={**base.extra, VERIFY_RUN: {"layout": self.spec}},
        )

    def label(self, config: RunConfig) -> str:
        """The spec with the transport the run resolved (pipeline:3:gloo), as the table and errors name it."""
        if self.transport or self.nproc == 1:
            return self.spec
        return VerifyLayout(self.strategy, self.nproc, config.resolved_transport, self.compile).spec


def parse_layouts(text: str) -> list[VerifyLayout]:
    """--layouts 'pipeline:1,pipeline:3:zmq,...' -> layouts; ConfigError (one line) naming a bad one."""
    layouts = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        layouts.append(parse_layout(item))
    if not layouts:
        raise ConfigError(f"--layouts {text!r} lists no layout; e.g. --layouts pipeline:1,pipeline:3:zmq,data:2,cfg:2")
    return layouts


def parse_layout(item: str) -> VerifyLayout:
    fix = "write STRATEGY:N[:TRANSPORT][:compile], e.g. pipeline:3:zmq or pipeline:1:compile"
    tokens = item.split(":")
    if len(tokens) < 2 or tokens[0] not in VERIFY_STRATEGIES:
        raise ConfigError(f"--layouts {item!r}: the strategy must be one of {', '.join(VERIFY_STRATEGIES)}; {fix}")
    try:
        nproc = int(tokens[1])
    except ValueError:
        nproc = 0
    if nproc < 1:
        raise ConfigError(f"--layouts {item!r}: N={tokens[1]!r} is not a process count >= 1; {fix}")
    transport, compiled = None, False
    for token in tokens[2:]:
        if token == COMPILE_TOKEN and not compiled:
            compiled = True
        elif token in TRANSPORTS and transport is None:
            transport = token
        else:
            raise ConfigError(
                f"--layouts {item!r}: {token!r} is neither a transport ({', '.join(TRANSPORTS)}) nor 'compile'; {fix}"
            )
    if tokens[0] == "cfg" and nproc % 2:
        raise ConfigError(f"--layouts {item!r}: a guidance split needs an even N (pairs); use cfg:2")
    return VerifyLayout(tokens[0], nproc, transport, compiled)


def default_layouts(device: str, gpus: int, *, guidance: bool, compile: bool = False) -> list[VerifyLayout]:
    """What `ppsvd verify` checks without --layouts, on this machine:

    - 1 process (the baseline every speed is also compared with);
    - a pipeline: on CPU 3 stages over gloo and over zmq; over the visible GPUs when there are 2
      or more; several stages on the one GPU (zmq) when there is one;
    - data parallelism on 2 processes (or every GPU);
    - a guidance pair, when guidance is on (--max-guidance-scale > 1).
    --compile compiles the UNet in each of them (the checks then hold each to the compile bound).
    """
    if device == "cpu":
        layouts = [VerifyLayout("pipeline", 1), VerifyLayout("pipeline", 3, "gloo"), VerifyLayout("pipeline", 3, "zmq")]
        layouts.append(VerifyLayout("data", 2))
    elif gpus >= 2:
        layouts = [VerifyLayout("pipeline", 1), VerifyLayout("pipeline", gpus), VerifyLayout("data", gpus)]
    else:
        layouts = [VerifyLayout("pipeline", 1), VerifyLayout("pipeline", 3, "zmq"), VerifyLayout("data", 2)]
    if guidance:
        layouts.append(VerifyLayout("cfg", 2))
    return [lay.with_compile(compile) for lay in layouts]
