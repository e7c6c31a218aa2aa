"""The stage processes' side of a service (ppsvd serve): jobs in, events out, through the run's store.

The launcher (ppsvd/serve/pipeline.py) owns the job queue; the stages never see it. Stage 0 of a
free replica asks for a job, the launcher's feeder answers with the job's spec, the sample
carries the spec (its meta) through the stages, and the stages report what happened to it. Every
key lives under the generation's run id (a restart of the workers is a new run id, so nothing
of a dead generation can be mistaken for the new one's):

    serve/demand             counter: a replica's stage 0 asks for a job (store.add -> its ticket t)
    serve/want/<t>           set right after by that stage: the feeder waits on it (no polling)
    serve/ticket/<t>         the feeder's answer: the job's spec (JSON), or NONE_LEFT (draining)
    serve/pair/<replica>/<n> a guidance pair: the unconditional half's n-th spec, for the conditional half
    serve/cancel/<job>       the job was deleted: stages drop its sample at their next boundary
    serve/events, serve/event/<n>   what happened to jobs (JSON), read in order by the launcher
    serve/ready/<rank>       this rank has loaded, joined and agreed on the split: it serves
    lane/<rank>              what the rank computes now (runtime/progress.py, lanes=True)

Events: {"kind": "written", "job", "files", "timings"} once the last stage's files are all in
place; {"kind": "failed", "job", "message"} when a job fails on its own (its image cannot be read,
say: the stage goes on with the next job); {"kind": "dropped", "job", "rank"} when a cancelled
job's sample left the pipeline. A job's spec travels as the sample's meta, so the last stage
knows which job it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ppsvd.backends.deadline import Deadline
from ppsvd.errors import Cancelled, PpsvdError
from ppsvd.io.atomic import write_with
from ppsvd.io.samples import SampleSpec
from ppsvd.runtime.control import key

NONE_LEFT = "none"
"""The feeder's answer to a ticket when the service drains: end of stream."""
WAIT_SLICE_S = 0.25
"""A blocking store wait lasts at most this long before the stage checks whether the run stops."""
THUMBNAILS = "thumbnails"
"""The last stage's folder (in the output directory) of each job's first frame as PNG."""


def serve_key(run_id: str, *parts: object) -> str:
    return key(run_id, "serve", *parts)


def spec_to_json(spec: SampleSpec) -> str:
    return json.dumps(
        {
            "index": spec.index,
            "job": spec.job,
            "image": spec.image,
            "seed": spec.seed,
            "fps": spec.fps,
            "motion_bucket_id": spec.motion_bucket_id,
            "noise_aug_strength": spec.noise_aug_strength,
            "min_guidance_scale": spec.min_guidance_scale,
            "max_guidance_scale": spec.max_guidance_scale,
        }
    )


def spec_from_json(text: str) -> SampleSpec:
    """The spec the launcher wrote (it validated every value when the job was accepted)."""
    data = json.loads(text)
    return SampleSpec(
        index=int(data["index"]),
        image=str(data["image"]),
        seed=int(data["seed"]),
        fps=int(data["fps"]),
        motion_bucket_id=int(data["motion_bucket_id"]),
        noise_aug_strength=float(data["noise_aug_strength"]),
        name=str(data["job"]),  # the output files are named after the job
        min_guidance_scale=data.get("min_guidance_scale"),
        max_guidance_scale=data.get("max_guidance_scale"),
        job=str(data["job"]),
    )


def publish_event(store: Any, run_id: str, event: dict[str, Any]) -> None:
    """Append one event to the generation's event log (two store round trips)."""
    n = int(store.add(serve_key(run_id, "events"), 1))
    store.set(serve_key(run_id, "event", n), json.dumps(event, default=str))


def is_cancelled(store: Any, run_id: str, job: str | None) -> bool:
    return job is not None and bool(store.check([serve_key(run_id, "cancel", job)]))


def mark_serving(store: Any, run_id: str, rank: int) -> None:
    store.set(serve_key(run_id, "ready", rank), "1")


def own_connection(store: Any, timeout_s: float) -> Any:
    """A new client of the same TCPStore. A TCPStore client serves one request at a time, and a
    blocking wait holds it: each thread that waits on a key gets a connection of its own, so the
    heartbeats, progress and events on the shared one never queue behind it."""
    from torch.distributed import TCPStore  # heavy: torch

    return TCPStore(store.host, store.port, is_master=False, timeout=timedelta(seconds=timeout_s), use_libuv=True)


def wait_key(store: Any, name: str, deadline: Deadline) -> None:
    """Block until `name` is set (the store wakes us; no polling), checking the run's stop flag
    between slices; Cancelled or TransportTimeout from the deadline. `store` must be a connection
    of the waiting thread's own (own_connection)."""
    from torch.distributed import DistStoreError  # heavy: torch

    while True:
        try:
            store.wait([name], timedelta(seconds=deadline.slice(WAIT_SLICE_S)))
            return
        except DistStoreError:
            continue  # the slice ended: check the flags, wait again


class JobFeed:
    """Stage 0 of a serving replica: the next job, prepared (a stage.SampleSource).

    Waits as long as the service is idle: no deadline on an empty queue, only the run's stop
    flag. In a guidance pair the unconditional half (h = 0) takes the ticket and hands the spec
    to the conditional half (h = 1), so both halves start the same job."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        *,
        rank: int,
        replica: int,
        half: int | None,
        cancelled,
        timeout_s: float,
        base: Path | None = None,
    ) -> None:
        self.store = store
        self.base = base
        """What a spec's relative image path is relative to: this rank's run directory (a service's
        ranks on several hosts may see the shared state dir at different paths)."""
        self.waiter = own_connection(store, timeout_s)
        self.run_id = run_id
        self.rank = rank
        self.replica = replica
        self.half = half
        self.cancelled = cancelled
        self.taken = 0
        self.done = False

    def next(self, model) -> tuple[Any, float, float] | None:
        while not self.done:
            spec = self._read_pair() if self.half == 1 else self._take()
            if spec is None:
                self.done = True
                if self.half == 0:
                    self._publish_pair(None)
                return None
            if self.half != 1 and is_cancelled(self.store, self.run_id, spec.job):
                publish_event(self.store, self.run_id, {"kind": "dropped", "job": spec.job, "rank": self.rank})
                continue
            if self.half == 0:
                self._publish_pair(spec)  # as given: the partner resolves its image path on its own host
            if self.base is not None and not Path(spec.image).is_absolute():
                spec = dataclasses.replace(spec, image=str((self.base / spec.image).resolve()))
            taken = time.time()
            started = time.perf_counter()
            try:
                sample = model.prepare(spec.index, spec)
            except Cancelled:
                raise
            except Exception as exc:  # the job's own input (an unreadable image): it fails alone, the stage goes on
                if self.half != 1:
                    message = str(exc) if isinstance(exc, PpsvdError) else f"{type(exc).__name__}: {exc}"
                    message = message.replace(f"--image {spec.image}", "the job's image")  # no server paths
                    publish_event(self.store, self.run_id, {"kind": "failed", "job": spec.job, "message": message})
                continue
            from ppsvd.models.base import synchronize  # heavy: imports torch

            synchronize(model.device)  # prepare_s covers the encode itself (CUDA runs asynchronously)
            sample.meta.update(job=spec.job, taken=taken, prepared=time.time())
            return sample, taken, time.perf_counter() - started
        return None

    def _take(self) -> SampleSpec | None:
        ticket = int(self.store.add(serve_key(self.run_id, "demand"), 1))
        self.store.set(serve_key(self.run_id, "want", ticket), str(self.rank))
        answer = serve_key(self.run_id, "ticket", ticket)
        wait_key(self.waiter, answer, Deadline(math.inf, what="the next job", cancelled=self.cancelled))
        text = self.store.get(answer).decode()
        for name in (answer, serve_key(self.run_id, "want", ticket)):
            self.store.delete_key(name)
        return None if text == NONE_LEFT else spec_from_json(text)

    def _pair_key(self) -> str:
        return serve_key(self.run_id, "pair", self.replica, self.taken)

    def _publish_pair(self, spec: SampleSpec | None) -> None:
        self.store.set(self._pair_key(), NONE_LEFT if spec is None else spec_to_json(spec))
        self.taken += 1

    def _read_pair(self) -> SampleSpec | None:
        name = self._pair_key()
        wait_key(self.waiter, name, Deadline(math.inf, what="the partner's next job", cancelled=self.cancelled))
        text = self.store.get(name).decode()
        self.store.delete_key(name)
        self.taken += 1
        return None if text == NONE_LEFT else spec_from_json(text)


class Hops:
    """A service's announced hand-offs (stage.HopSignals): before a stage sends its n-th message
    it sets serve/hop/<its rank>/<n>; the next stage waits for that key (as long as the service is
    idle), then receives with the usual --timeout. So no receive is ever posted on an idle link
    (gloo's and NCCL's own timeouts would break it), and a transfer that stalls is still caught."""

    def __init__(self, store: Any, run_id: str, timeout_s: float) -> None:
        self.store = store
        self.run_id = run_id
        self.timeout_s = timeout_s
        self._local = threading.local()  # the receiving thread's own connection (it blocks in waits)

    def announce(self, sender: int, n: int) -> None:
        self.store.set(serve_key(self.run_id, "hop", sender, n), "1")

    def wait(self, sender: int, n: int, cancelled) -> None:
        waiter = getattr(self._local, "store", None)
        if waiter is None:
            waiter = self._local.store = own_connection(self.store, self.timeout_s)
        name = serve_key(self.run_id, "hop", sender, n)
        wait_key(waiter, name, Deadline(math.inf, what=f"message {n} from rank {sender}", cancelled=cancelled))
        waiter.delete_key(name)


def drop_check(store: Any, run_id: str, rank: int):
    """ctx.drop of a serving stage: a cancelled job's sample leaves here (and says so)."""

    def drop(sample) -> bool:
        job = sample.meta.get("job")
        if not is_cancelled(store, run_id, job):
            return False
        publish_event(store, run_id, {"kind": "dropped", "job": job, "rank": rank})
        return True

    return drop


def written_hook(store: Any, run_id: str, run_dir: Path):
    """ResultWriter's on_written of a serving last stage: the first frame as the job's thumbnail
    (PNG, atomic), then the 'written' event, so every file is in place before the launcher hears of it."""

    def on_written(result, entry: dict[str, Any]) -> None:
        job = result.meta.get("job")
        files = {"latents": entry.get("latents"), "video": (entry.get("videos") or [None])[0]}
        if result.frames is not None:
            files["thumbnail"] = _write_thumbnail(Path(run_dir) / THUMBNAILS / f"{job}.png", result.frames[0][0])
            files["thumbnail"] = str(Path(files["thumbnail"]).relative_to(run_dir))
        timings = {name: result.meta.get(name) for name in ("taken", "prepared", "completed")}
        timings["written"] = time.time()
        publish_event(store, run_id, {"kind": "written", "job": job, "files": files, "timings": timings})

    return on_written


def _write_thumbnail(path: Path, frame) -> Path:

    pixels = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    write_with(path, lambda tmp: image.save(tmp, format="PNG"))
    return path
