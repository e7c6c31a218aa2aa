"""ppsvd serve's parts that need no process: request checks, the job store, the served shape."""

from __future__ import annotations

import sqlite3

import pytest

from ppsvd.config import RunConfig
from ppsvd.serve.jobs import MAX_CRASHES, JobStore
from ppsvd.serve.schemas import ApiError, Served, image_ref, list_params, parse_job
from ppsvd.serve.uploads import check_image

SERVED = Served.from_config(
    RunConfig.from_options(model="tiny", latent_shape=(1, 4, 4, 8, 12), total_steps=8, fps=6), pixel_scale=8
)


def bad(fields, status=400):
    with pytest.raises(ApiError) as info:
        parse_job(fields, SERVED)
    assert info.value.status == status
    return info.value


def test_served_shape_and_defaults():
    assert (SERVED.size, SERVED.frames, SERVED.steps) == ("96x64", 4, 8)
    params = parse_job({"prompt": "a cat", "seed": "12", "size": "96x64", "num_inference_steps": "8"}, SERVED)
    assert (params.seed, params.fps, params.motion_bucket_id, params.max_guidance_scale) == (12, 6, 127, 3.0)
    assert parse_job({}, SERVED).seed is None  # the service draws one and stores it


def test_wrong_shape_names_the_served_one():
    error = bad({"size": "1280x720"})
    assert error.param == "size" and "96x64" in error.message and "1280x720" in error.message
    error = bad({"num_inference_steps": 28})
    assert "--num-inference-steps 8" in error.message
    error = bad({"seconds": "4"})  # 24 frames at fps 6, the server makes 4
    assert "4 frames" in error.message and "0.6667" in error.message
    assert parse_job({"seconds": "0.6667"}, SERVED).fps == 6


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"seed": "1.5"}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": "-1"}, "seed"),
        ({"motion_bucket_id": "256"}, "motion_bucket_id"),
        ({"noise_aug_strength": "nan"}, "noise_aug_strength"),
        ({"min_guidance_scale": "4"}, "min_guidance_scale"),
        ({"max_guidance_scale": "1.0", "min_guidance_scale": "1.0"}, "max_guidance_scale"),  # guidance on: keep > 1
        ({"model": "sora-2"}, "model"),
        ({"motion_bucket": "3"}, "motion_bucket"),  # a typo is refused, not ignored
    ],
)
def test_bad_values_are_400_naming_the_field(fields, param):
    assert bad(fields).param == param


def test_image_reference_forms():
    assert image_ref({}, b"png").data == b"png"
    assert image_ref({"input_reference": {"image_url": "data:x"}}, None).url == "data:x"
    assert image_ref({"input_reference[image_url]": "data:y"}, None).url == "data:y"
    with pytest.raises(ApiError, match="input_reference is required"):
        image_ref({"prompt": "x"}, None)
    with pytest.raises(ApiError, match="file_id"):
        image_ref({"input_reference": {"file_id": "file-1"}}, None)


def test_image_checks_bound_pixels_before_decoding(tmp_path):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000)).save(path)
    with pytest.raises(ApiError) as info:
        check_image(path.read_bytes(), max_pixels=10_000_000)
    assert info.value.status == 413 and "4000x3000" in info.value.message
    with pytest.raises(ApiError) as info:
        check_image(b"GIF89a this is no image", max_pixels=10_000_000)
    assert info.value.status == 400 and info.value.code == "invalid_image"
    truncated = path.read_bytes()[:200]
    with pytest.raises(ApiError):
        check_image(truncated, max_pixels=20_000_000)
    assert check_image(path.read_bytes(), max_pixels=20_000_000) == "png"


def test_list_params():
    assert list_params({}) == (None, 20, "desc")
    for query in ({"limit": "0"}, {"order": "up"}, {"after": "../etc"}, {"page": "2"}):
        with pytest.raises(ApiError):
            list_params(query)


def test_job_store_transitions_and_recovery(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for k in range(3):
        store.add(f"video_{k:032x}", {"seed": k}, f"video_{k:032x}.png")
    first = store.claim_next()
    assert first.id == f"video_{0:032x}" and first.status == "in_progress"
    assert store.queue_position(store.get(f"video_{2:032x}")) == 1
    assert store.complete(first.id, {"video": "videos/a.mp4"}, {})
    assert not store.complete(first.id, {"video": "videos/a.mp4"}, {})  # never completed twice
    second = store.claim_next()
    store.close()
    # A killed server: the row it had in flight is queued again, in its place at the front.
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.recover() == 1
    assert store.claim_next().id == second.id
    jobs, more = store.page(after=None, limit=2, order="asc")
    assert [j.seq for j in jobs] == [1, 2] and more
    jobs, more = store.page(after=jobs[-1].id, limit=2, order="asc")
    assert [j.seq for j in jobs] == [3] and not more
    assert store.page(after="video_" + "f" * 32, limit=2, order="asc") is None
    mode = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_job_in_flight_during_every_crash_fails_alone(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add("video_" + "1" * 32, {}, "a.png")
    for _ in range(MAX_CRASHES):
        job = store.claim_next()
        requeued, failed = store.requeue([job.id], crash="stage 1 was killed by SIGKILL")
    assert failed == [job.id] and not requeued
    job = store.get(job.id)
    assert job.status == "failed" and job.error_code == "pipeline_failed" and "SIGKILL" in job.error_message
    # A drain or a stop is no crash: the job waits for the next start, however often.
    store.add("video_" + "2" * 32, {}, "b.png")
    for _ in range(MAX_CRASHES + 1):
        job = store.claim_next()
        store.requeue([job.id], crash=None)
    assert store.get(job.id).status == "queued"


def test_a_jobs_own_guidance_equals_a_run_with_that_guidance():
    """SampleSpec's guidance scales (a served job's) give stage 0 the tensors a run configured with
    those scales gives: the per-frame scale travels with the sample."""
    import torch

    from ppsvd.io.samples import SampleSpec
    from ppsvd.models.base import build_stage_model
    from ppsvd.planning.steps import partition_steps

    torch.set_num_threads(1)
    plan = partition_steps(4, 1)
    base = dict(model="tiny", latent_shape=(1, 4, 3, 8, 8), total_steps=4)
    served = build_stage_model(RunConfig.from_options(**base), plan, 0, torch.device("cpu"))
    run = build_stage_model(
        RunConfig.from_options(**base, min_guidance_scale=1.5, max_guidance_scale=2.5), plan, 0, torch.device("cpu")
    )
    spec = dict(index=0, image="builtin", seed=9, fps=6, motion_bucket_id=127, noise_aug_strength=0.02, name="x")
    job = served.prepare(0, SampleSpec(**spec, min_guidance_scale=1.5, max_guidance_scale=2.5, job="video_1"))
    reference = run.prepare(0, SampleSpec(**spec))
    assert job.tensors.keys() == reference.tensors.keys()
    for name, tensor in reference.tensors.items():
        assert torch.equal(job.tensors[name], tensor), name
    assert job.meta["max_guidance_scale"] == 2.5 and job.meta["job"] == "video_1"


def test_workers_that_end_unasked_count_as_a_crash():
    # The supervisor restarts workers that end without a drain, even quietly with exit 0: a
    # service whose workers are gone must not go on accepting jobs no one will run.
    from ppsvd.runtime.launch import WorkersEnded
    from ppsvd.serve.pipeline import _unasked_end

    assert _unasked_end(WorkersEnded(), draining=True) is None
    assert "did not ask" in _unasked_end(WorkersEnded(), draining=False)
    assert _unasked_end(WorkersEnded(error="stage 1 failed", failed_stage=1), draining=True) == "stage 1 failed"
    assert "SIGTERM" in _unasked_end(WorkersEnded(signum=15), draining=False)
