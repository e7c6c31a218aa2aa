"""SVDStageModel against diffusers' own StableVideoDiffusionPipeline, on the tiny SVD (CPU, fp32).

The tiny model is saved with save_pretrained and loaded back through from_pretrained, the same
path a downloaded model takes. N stages are chained in one process (prepare on stage 0, each
stage's step range, finalize on the last) and the result must be bitwise the reference's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ppsvd.config import TINY_LATENT_SHAPE, RunConfig
from ppsvd.errors import ConfigError, InputImageError, ModelNotFoundError
from ppsvd.io.images import BUILTIN_IMAGE, builtin_image, load_image, resolve_images
from ppsvd.models import tiny
from ppsvd.models.base import build_stage_model, model_class, preflight
from ppsvd.models.svd import HANDOFF, SVDStageModel, frames_to_uint8, stage_components
from ppsvd.planning.steps import partition_steps

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine a second
    thread only adds contention (measured: 10x slower steps under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-svd"))


@pytest.fixture(scope="module")
def reference(tiny_repo):
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_repo)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_chain(config: RunConfig, num_stages: int, index: int):
    """ppsvd's pipeline in one process: what N workers would do, hand-offs checked against the schema."""
    plan = partition_steps(config.job.total_steps, num_stages)
    stages = [SVDStageModel(config, plan, k, CPU) for k in range(num_stages)]
    sample = stages[0].prepare(index)
    for stage, steps in zip(stages, plan.ranges, strict=True):
        for name, spec in stage.schema().items():
            tensor = sample.tensors[name]
            assert (tuple(tensor.shape), str(tensor.dtype)) == (spec.shape, f"torch.{spec.dtype}"), name
        sample = stage.run_steps(sample, steps)
    return stages, stages[-1].finalize(sample)


def run_reference(pipe, config: RunConfig, image, index: int, output_type: str):
    b, _, f, h, w = config.job.latent_shape
    return pipe(
        image,
        height=h * 8,
        width=w * 8,
        num_frames=f,
        num_inference_steps=config.job.total_steps,
        fps=config.svd.fps,
        motion_bucket_id=config.svd.motion_bucket_id,
        noise_aug_strength=config.svd.noise_aug_strength,
        min_guidance_scale=config.svd.min_guidance_scale,
        max_guidance_scale=config.svd.max_guidance_scale,
        decode_chunk_size=config.svd.decode_chunk_size,
        num_videos_per_prompt=b,
        generator=torch.Generator("cpu").manual_seed(config.job.seed + index),
        output_type=output_type,
    ).frames


# Two videos per sample, classifier-free guidance, a chunked decode, an uneven split for N=2 and
# N=4 (5 steps), a sample index > 0, and an input image file that needs resizing.
CFG_CASE = dict(
    total_steps=5,
    latent_shape=(2, 4, 3, 8, 8),
    seed=3,
    fps=7,
    motion_bucket_id=100,
    noise_aug_strength=0.05,
    min_guidance_scale=1.0,
    max_guidance_scale=2.5,
    decode_chunk_size=2,
)
CFG_INDEX = 1


@pytest.fixture(scope="module")
def cfg_case(tiny_repo, reference, tmp_path_factory):
    image_path = tmp_path_factory.mktemp("images") / "input.png"
    builtin_image(50, 30).save(image_path)
    config = RunConfig.from_options(model=str(tiny_repo), images=(str(image_path),), **CFG_CASE)
    image = load_image(str(image_path), 64, 64)  # what ppsvd gives the pipeline
    latents = run_reference(reference, config, image, CFG_INDEX, "latent")
    frames = run_reference(reference, config, image, CFG_INDEX, "np")
    return config, latents, frames_to_uint8(frames)


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_pipelined_svd_is_bitwise_diffusers(cfg_case, num_stages):
    config, ref_latents, ref_frames = cfg_case
    stages, result = run_chain(config, num_stages, CFG_INDEX)
    assert result.latents.dtype == torch.float32
    assert torch.equal(result.latents, ref_latents), (result.latents - ref_latents).abs().max()
    assert result.frames.dtype == torch.uint8 and tuple(result.frames.shape) == (2, 3, 64, 64, 3)
    assert np.array_equal(result.frames.numpy(), ref_frames)
    assert result.meta == {
        "seed": config.job.seed + CFG_INDEX,
        "image": config.job.images[0],
        "name": f"input-s{config.job.seed + CFG_INDEX}",
        "fps": 7,
        "motion_bucket_id": 100,
        "noise_aug_strength": 0.05,
    }


def test_without_guidance_and_builtin_image(tiny_repo, reference):
    """max_guidance_scale <= 1 turns CFG off: half-size hand-offs, still bitwise."""
    config = RunConfig.from_options(
        model=str(tiny_repo),
        total_steps=4,
        latent_shape=(1, 4, 2, 8, 8),
        seed=11,
        min_guidance_scale=1.0,
        max_guidance_scale=1.0,
    )
    image = builtin_image(64, 64)
    ref_latents = run_reference(reference, config, image, 0, "latent")
    stages, result = run_chain(config, 2, 0)
    assert stages[0].schema()["image_embeddings"].shape == (1, 1, 32)
    assert torch.equal(result.latents, ref_latents)
    assert result.meta["image"] == BUILTIN_IMAGE


def test_each_stage_loads_only_its_parts(tiny_repo):
    config = RunConfig.from_options(model=str(tiny_repo), total_steps=3, latent_shape=(1, 4, 2, 8, 8))
    plan = partition_steps(3, 3)
    first, middle, last = (SVDStageModel(config, plan, k, CPU) for k in range(3))
    assert stage_components(True, True) == ("unet", "scheduler", "image_encoder", "feature_extractor", "vae")
    assert first.vae.encoder is not None and first.vae.decoder is None
    assert middle.vae is None and middle.pipe.image_encoder is None
    assert last.vae.encoder is None and last.vae.decoder is not None and last.pipe.image_encoder is None
    assert set(first.schema()) == set(HANDOFF) == set(middle.schema())
    assert "image_encoder" in first.describe()["parameters"]
    assert middle.describe()["components"] == ["unet", "scheduler"]


def test_builtin_tiny_model_is_the_saved_one(tiny_repo):
    """--model tiny builds in memory exactly the weights save_tiny writes, and is exact across N.

    (Its outputs are not compared with the saved model's: on CPU, float results depend in the
    last bits on the memory alignment of the weights, and memory-mapped safetensors are not
    64-byte aligned like fresh tensors. Same weights, same loading path: same bits.)
    """
    built = RunConfig.from_options(model="tiny", total_steps=2, latent_shape=TINY_LATENT_SHAPE)
    saved = built.replace(model=str(tiny_repo))
    assert model_class(built) is SVDStageModel
    plan = partition_steps(2, 1)
    a, b = build_stage_model(built, plan, 0, CPU), build_stage_model(saved, plan, 0, CPU)
    for module_a, module_b in [(a.unet, b.unet), (a.vae, b.vae), (a.pipe.image_encoder, b.pipe.image_encoder)]:
        state_b = module_b.state_dict()
        assert all(torch.equal(t, state_b[n]) for n, t in module_a.state_dict().items())
    assert a.describe()["source"] == "tiny"
    _, one = run_chain(built, 1, 2)
    _, two = run_chain(built, 2, 2)
    assert torch.equal(one.latents, two.latents) and torch.equal(one.frames, two.frames)


def test_hub_id_loads_from_the_cache_offline(tiny_repo, monkeypatch, tmp_path):
    """A hub id resolves through HF_HOME's cache with HF_HUB_OFFLINE=1, like a downloaded model."""
    repo_id = "ppsvd-test/tiny-svd"
    snapshot = tmp_path / "hf" / "hub" / "models--ppsvd-test--tiny-svd" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_repo, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = RunConfig.from_options(model=repo_id, total_steps=2, latent_shape=(1, 4, 2, 8, 8))
    preflight(config)
    from_hub = SVDStageModel(config, partition_steps(2, 1), 0, CPU)
    from_dir = SVDStageModel(config.replace(model=str(tiny_repo)), partition_steps(2, 1), 0, CPU)
    assert from_hub.describe()["source"] == "hub"
    hub_state, dir_state = from_hub.prepare(0).tensors, from_dir.prepare(0).tensors
    assert all(torch.equal(t, dir_state[name]) for name, t in hub_state.items())


# -- preflight -----------------------------------------------------------------------------------


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_preflight_accepts_a_good_run(tiny_repo, monkeypatch):
    # The memory check reads this machine's free memory; a fixed 64 GiB keeps the test machine-independent.
    monkeypatch.setattr("ppsvd.models.base._free_memory", lambda config: ([64 * 1024**3], ["this host"]))
    preflight(RunConfig.from_options(model=str(tiny_repo), latent_shape=(1, 4, 14, 64, 64)))
    preflight(RunConfig.from_options(model="tiny", latent_shape=TINY_LATENT_SHAPE))
    preflight(RunConfig.from_options(model="stabilityai/stable-video-diffusion-img2vid-xt", weights="random"))


def test_preflight_missing_local_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as exc:
        preflight(RunConfig.from_options(model=str(missing), latent_shape=(1, 4, 2, 8, 8)))
    assert str(missing) in one_line(exc)


def test_preflight_incomplete_local_dir(tiny_repo, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_repo, partial)
    shutil.rmtree(partial / "image_encoder")
    with pytest.raises(ModelNotFoundError) as exc:
        preflight(RunConfig.from_options(model=str(partial), latent_shape=(1, 4, 2, 8, 8)))
    assert "image_encoder/config.json" in one_line(exc)


def test_preflight_unknown_hub_id_offline_names_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as exc:
        preflight(RunConfig.from_options(model="nobody/no-such-svd", latent_shape=(1, 4, 2, 8, 8)))
    message = one_line(exc)
    assert "nobody/no-such-svd" in message
    assert str(tmp_path / "empty-hf-home" / "hub") in message
    assert "hf download nobody/no-such-svd" in message
    assert exc.value.exit_code == 2


def test_preflight_wrong_channel_count():
    with pytest.raises(ConfigError) as exc:
        preflight(RunConfig.from_options(model="tiny", latent_shape=(1, 8, 4, 8, 8)))
    assert "use --latent-shape 1 4 4 8 8" in one_line(exc)


def test_preflight_one_frame_with_guidance():
    with pytest.raises(ConfigError) as exc:
        preflight(RunConfig.from_options(model="tiny", latent_shape=(1, 4, 1, 8, 8)))
    assert "F >= 2" in one_line(exc)


def test_preflight_bad_images(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    before = sorted(tmp_path.rglob("*"))
    for images in [(str(not_image),), (str(tmp_path / "missing.png"),), (str(tmp_path / "*.jpg"),)]:
        with pytest.raises(InputImageError) as exc:
            preflight(RunConfig.from_options(model="tiny", latent_shape=TINY_LATENT_SHAPE, images=images))
        assert images[0] in one_line(exc)
        assert exc.value.exit_code == 2
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


# -- images --------------------------------------------------------------------------------------


def test_resolve_images_file_dir_glob(tmp_path):
    for name in ["b.png", "a.jpg", "c.PNG"]:
        builtin_image(8, 8).save(tmp_path / name, format="PNG")
    (tmp_path / "readme.txt").write_text("skip me")
    (tmp_path / "sub").mkdir()
    expected_dir = tuple(str(tmp_path / n) for n in ["a.jpg", "b.png", "c.PNG"])
    assert resolve_images([str(tmp_path)]) == expected_dir
    assert resolve_images([str(tmp_path / "*.png")]) == (str(tmp_path / "b.png"),)
    assert resolve_images([str(tmp_path / "b.png"), str(tmp_path / "a.jpg")]) == (
        str(tmp_path / "b.png"),
        str(tmp_path / "a.jpg"),
    )
    for bad in [str(tmp_path / "sub"), str(tmp_path / "*.gif"), str(tmp_path / "nope.png")]:
        with pytest.raises(InputImageError) as exc:
            resolve_images([bad])
        assert bad in one_line(exc)


def test_builtin_image_is_deterministic():
    a, b = builtin_image(64, 48), builtin_image(64, 48)
    assert a.mode == "RGB" and a.size == (64, 48)
    assert a.tobytes() == b.tobytes()
    pixels = np.asarray(a)
    assert tuple(pixels[0, 0]) == (0, 0, 255)  # gradient corner: no red, no green, full blue
    assert tuple(pixels[47, 63]) == (255, 255, 0)
    assert tuple(pixels[int(0.3 * 48), int(0.3 * 64)]) == (240, 235, 210)  # the disc
    assert builtin_image(32, 32).size == (32, 32)


def test_load_image_converts_and_resizes(tmp_path):
    from PIL import Image

    path = tmp_path / "gray.png"
    Image.new("LA", (10, 7), (128, 255)).save(path)
    image = load_image(str(path), 16, 24)
    assert image.mode == "RGB" and image.size == (16, 24)


def test_fp16_variant_only_download_loads(tiny_repo, tmp_path):
    """A repo fetched with only the fp16 weight files (SVD-XT ships both) still loads."""
    from ppsvd.models.svd import weights_variant

    repo = tmp_path / "fp16-only"
    shutil.copytree(tiny_repo, repo)
    weights = repo / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    fp32_run = RunConfig.from_options(model=str(repo))
    assert weights_variant(fp32_run, "local", "unet") == "fp16"
    assert weights_variant(fp32_run, "local", "vae") is None
    config = RunConfig.from_options(model=str(repo), total_steps=2, latent_shape=(1, 4, 2, 8, 8))
    preflight(config)
    stage = SVDStageModel(config, partition_steps(2, 2), 1, CPU)
    assert stage.unet.dtype == torch.float32


def test_pixel_sizes_must_be_multiples_of_8():
    """Only reachable with a VAE that downsamples less than 8x (SVD's is 8x: any H, W work)."""
    from ppsvd.models.svd import check_shapes

    config = RunConfig.from_options(model="some-vae-x2", latent_shape=(1, 4, 2, 6, 8))
    unet = {"in_channels": 8, "out_channels": 4}
    with pytest.raises(ConfigError) as exc:
        check_shapes(config, unet, {"block_out_channels": [32, 64], "latent_channels": 4})
    assert "12x16 pixels" in one_line(exc) and "multiples of 4" in one_line(exc)
    check_shapes(config, unet, {"block_out_channels": [32, 32, 32, 32], "latent_channels": 4})
