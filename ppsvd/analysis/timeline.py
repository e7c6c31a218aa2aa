"""The raw timing record of a run: what each stage did to each sample, and when.

Stages record wall-clock timestamps (time.time(), seconds) so records from several processes
on one host line up; across hosts they are as good as the hosts' clock sync. metrics.py turns
a RunTimeline into throughput, fill, efficiency and utilisation; this module only holds data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppsvd.io.atomic import write_text_atomic


@dataclass
class SampleSpan:
    """One stage's handling of one sample.

    recv_start/recv_end: the compute loop waiting for this sample from the previous stage
      (None on stage 0). A receiver thread fetches ahead, so this is ~0 when the sample was
      already there; `arrived` is when the transport finished receiving it.
    compute_*: everything this stage computes for the sample: prepare (stage 0), its steps,
      finalize/decode (last stage).
    send_start/enqueued: the compute loop handing the sample to the sender thread; they differ
      when the send queue was full (back-pressure from the next stage). send_end: when the
      transport finished sending it. All None on the last stage.
    Hop time of a hand-off = next stage's `arrived` - this stage's `send_start`.
    """

    index: int
    compute_start: float
    compute_end: float
    recv_start: float | None = None
    recv_end: float | None = None
    send_start: float | None = None
    send_end: float | None = None
    arrived: float | None = None
    enqueued: float | None = None
    steps: int = 0
    steps_s: float | None = None
    """Time spent in the denoising steps alone (compute minus prepare/encode and decode)."""
    prepare_s: float | None = None
    """Stage 0: time making the sample's initial state (SVD: image encode). None elsewhere."""
    finalize_s: float | None = None
    """Last stage: time turning the final latent into outputs (SVD: VAE decode), before the writer
    thread takes it. None elsewhere."""

    @property
    def compute_s(self) -> float:
        return self.compute_end - self.compute_start


@dataclass
class StageTimeline:
    stage: int
    steps: tuple[int, int]
    """[start, stop) of the global step indices this stage runs (data strategy: [0, T))."""
    launched: float
    """When the worker process started running ppsvd code."""
    ready: float
    """When its model was loaded and its links open: it could start working."""
    finished: float
    """When it sent or wrote its last output and was done."""
    samples: list[SampleSpan] = field(default_factory=list)
    host: str = ""
    device: str = "cpu"
    compile_s: float | None = None
    """--compile: the warm-up call that compiled the UNet (part of load_s, before ready); None: eager."""

    @property
    def load_s(self) -> float:
        return self.ready - self.launched


@dataclass
class RunTimeline:
    strategy: str
    """'pipeline' (stages in a chain), 'data' (independent workers), 'cfg' or 'hybrid'
    (planning.layouts.Layout.kind)."""
    total_steps: int
    num_samples: int
    run_start: float
    """When the launcher started (before any worker existed)."""
    stages: list[StageTimeline] = field(default_factory=list)
    run_end: float | None = None
    """When the launch as a whole returned (the benchmark's total_time_sec ends here)."""
    partition: str = ""
    """--partition as asked ('auto', 'even' or sizes); the sizes that ran are the stages' steps."""
    costs: dict[str, Any] | None = None
    """The ppsvd.planning.costs.CostModel the run was planned (or predicted) with, as JSON; None if none was known."""

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def completions(self) -> dict[int, float]:
        """sample index -> when its result was complete (last stage, or the worker that ran it)."""
        if self.strategy == "pipeline":
            finishing = [self.stages[-1]] if self.stages else []
        elif self.strategy == "data":
            finishing = self.stages
        else:  # cfg and hybrid layouts: the spans that finalized (a last stage of some replica), latest per sample
            done: dict[int, float] = {}
            for span in (span for stage in self.stages for span in stage.samples if span.finalize_s is not None):
                done[span.index] = max(done.get(span.index, span.compute_end), span.compute_end)
            return done
        return {span.index: span.compute_end for stage in finishing for span in stage.samples}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> RunTimeline:
        stages = []
        for s in data.get("stages", []):
            spans = [SampleSpan(**span) for span in s.get("samples", [])]
            fields = {k: v for k, v in s.items() if k != "samples"}
            fields["steps"] = tuple(fields["steps"])
            stages.append(StageTimeline(**fields, samples=spans))
        top = {k: v for k, v in data.items() if k != "stages"}
        return RunTimeline(**top, stages=stages)

    def save(self, path: Path) -> None:

        write_text_atomic(path, json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: Path) -> RunTimeline:
        return RunTimeline.from_json(json.loads(Path(path).read_text()))
