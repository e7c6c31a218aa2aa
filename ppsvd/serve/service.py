"""What the API does, apart from HTTP: accept a job durably, look jobs up, delete them, find their files.

Blocking (SQLite, PIL, file writes): the app calls these from its thread pool.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from ppsvd.serve.config import ServeConfig
from ppsvd.serve.jobs import JobStore
from ppsvd.serve.metrics import ServiceMetrics
from ppsvd.serve.pipeline import Pipeline, remove_outputs, retry_after
from ppsvd.serve.schemas import (
    CONTENT_VARIANTS,
    ApiError,
    Served,
    check_job_id,
    image_ref,
    parse_job,
    video_object,
)
from ppsvd.serve.state import ServiceState
from ppsvd.serve.uploads import check_image, image_bytes, store_image

SEED_RANGE = 2**32
"""A job without a seed gets a random one in [0, 2**32), drawn and stored when it is accepted (a
re-run after a crash gives the same video); the video object says which."""


class Service:
    def __init__(
        self,
        config: ServeConfig,
        jobs: JobStore,
        state: ServiceState,
        pipeline: Pipeline,
        served: Served,
        metrics: ServiceMetrics,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.state = state
        self.pipeline = pipeline
        self.served = served
        self.metrics = metrics
        self.started = int(time.time())
        run = config.run
        self.serving = {
            "model": served.model,
            "size": served.size,
            "num_frames": served.frames,
            "num_inference_steps": served.steps,
            "strategy": run.layout.strategy,
            "nproc": run.layout.nproc,
            "layout": run.layout_plan().describe(),  # '2 stages', '4 workers', '2 replicas x 2 stages', ...
            "partition": run.layout.partition,
            "transport": run.resolved_transport,
            "device": run.model.device,
            "dtype": run.model.resolved_dtype,
            "guidance": served.guided,
            "defaults": {
                "fps": served.fps,
                "motion_bucket_id": served.motion_bucket_id,
                "noise_aug_strength": served.noise_aug_strength,
                "min_guidance_scale": served.min_guidance_scale,
                "max_guidance_scale": served.max_guidance_scale,
            },
            "max_upload_mb": config.max_upload_mb,
        }
        """What GET /v1/service says this server makes and how (fixed at start: what a page shows at its top)."""
        metrics.watch(jobs, state, self.serving)

    # -- jobs --------------------------------------------------------------------------------------
    def create(self, fields: dict[str, Any], upload: bytes | None) -> dict[str, Any]:
        """Check the request, store its image, commit its row; only then is its id returned."""
        self.check_accepting()
        queued = self.jobs.count("queued")
        if queued >= self.config.max_queue:
            wait = self.pipeline.seconds_per_job()
            raise ApiError(
                429,
                f"the queue is full ({queued} jobs waiting, --max-queue {self.config.max_queue}); retry later",
                code="queue_full",
                headers={"Retry-After": retry_after(wait)},
            )
        params = parse_job(fields, self.served)
        data = image_bytes(
            image_ref(fields, upload),
            max_bytes=self.config.max_upload_bytes,
            allow_urls=self.config.allow_image_urls,
        )
        extension = check_image(data, self.config.max_image_pixels)
        job_id = f"video_{secrets.token_hex(16)}"
        record = params.to_json()
        if record["seed"] is None:
            record["seed"] = secrets.randbelow(SEED_RANGE)
        image = store_image(self.config.uploads_dir, job_id, data, extension)
        job = self.jobs.add(job_id, record, image)
        self.metrics.submitted.inc()
        self.pipeline.job_added.set()
        return video_object(job, self.served, position=self.jobs.queue_position(job))

    def check_accepting(self) -> None:
        if self.pipeline.draining.is_set() or self.state.phase in ("draining", "stopped", "failed"):
            raise ApiError(
                503,
                "the service is stopping (draining) and accepts no new jobs; retry once it is back",
                code="draining",
                headers={"Retry-After": "10"},
            )
        if not self.state.ready:
            detail = f" ({self.state.detail})" if self.state.detail else ""
            raise ApiError(
                503,
                f"the service is not ready: {self.state.phase}{detail}; retry in a few seconds (GET /readyz)",
                code="not_ready",
                headers={"Retry-After": "2"},
            )

    def video(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        live = self.state.job_view(job.id) if job.status == "in_progress" else None
        position = self.jobs.queue_position(job) if job.status == "queued" else None
        return video_object(job, self.served, live, position)

    def page(self, after: str | None, limit: int, order: str) -> dict[str, Any]:
        found = self.jobs.page(after=after, limit=limit, order=order)
        if found is None:
            raise ApiError(404, f"after={after!r} is no video of this server", param="after", code="not_found")
        jobs, more = found
        data = [video_object(job, self.served, self.state.job_view(job.id)) for job in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    def delete(self, job_id: str) -> dict[str, Any]:
        """The job leaves: out of the queue, or out of the pipeline at its next stage boundary; its
        files are removed (those its last stage is writing right now, once they are written)."""
        check_job_id(job_id)
        job = self.jobs.delete(job_id)
        if job is None:
            raise _not_found(job_id)
        if job.status == "in_progress":
            self.pipeline.cancel(job.id)
        if job.status in ("queued", "in_progress"):
            self.metrics.cancelled.inc()
        self.state.job_left(job.id)
        (self.config.uploads_dir / job.image).unlink(missing_ok=True)
        remove_outputs(self.config.outputs_dir, job.id)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    def content(self, job_id: str, variant: str) -> tuple[Path, str, str]:
        """(path, media type, download name) of a completed job's file."""
        job = self._job(job_id)
        if job.status != "completed":
            raise ApiError(
                404,
                f"video {job.id} is {job.status}, not completed: its content is not there yet"
                + (f" ({job.error_message})" if job.status == "failed" else "; poll GET /v1/videos/{id}"),
                param="video_id",
                code="video_not_ready",
            )
        rel = (job.outputs or {}).get(variant)
        path = self.config.outputs_dir / rel if rel else None
        if path is None or not path.is_file():
            raise ApiError(404, f"video {job.id} has no {variant} file", param="variant", code="not_found")
        suffix = {"video": "mp4", "thumbnail": "png", "latents": "safetensors"}[variant]
        return path, CONTENT_VARIANTS[variant], f"{job.id}.{suffix}"

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.served.model, "object": "model", "created": self.started, "owned_by": "ppsvd"}],
        }

    def overview(self) -> dict[str, Any]:
        """GET /v1/service: the phase, the lanes, the queue (what a page shows)."""
        return {
            **self.state.snapshot(),
            "queued": self.jobs.count("queued"),
            "in_progress": self.jobs.count("in_progress"),
            "served": self.serving,
        }

    def _job(self, job_id: str):
        check_job_id(job_id)
        job = self.jobs.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no video {job_id!r} on this server", param="video_id", code="not_found")
