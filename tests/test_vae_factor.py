"""A model's own VAE scale factor: an SVD whose VAE has two levels (pixels = 2 x latent cells, as
diffusers' own StableVideoDiffusionPipeline test components are built) runs at 32x48 pixels
bitwise as diffusers runs it, and a size it cannot take is refused naming its factor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppsvd.io.images import builtin_image
from ppsvd.models import pixels
from tests.helpers import read_latents

HEIGHT, WIDTH, FRAMES, STEPS = 32, 48, 5, 3


@pytest.fixture(scope="module")
def two_level_svd(tmp_path_factory) -> Path:
    """diffusers' SVD test components (tests/pipelines/stable_video_diffusion in diffusers:
    get_dummy_components), saved with save_pretrained: the VAE has block_out_channels [32, 64].
    One change: their CLIP tower takes 32x32 images (their test passes a tensor, which the
    pipeline does not resize); given a PIL image, SVD's pipeline feeds the encoder 224x224, so
    this tower has image_size 224 (patch_size 32: still 49 positions)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=5,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
    )
    pipe = StableVideoDiffusionPipeline(
        unet=unet,
        image_encoder=image_encoder,
        scheduler=scheduler,
        vae=vae,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    assert pipe.vae_scale_factor == 2
    folder = tmp_path_factory.mktemp("two-level-svd")
    pipe.save_pretrained(folder)
    return folder


def ppsvd_cli(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ppsvd", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_the_factor_is_read_from_the_models_vae_config(two_level_svd):
    assert pixels.model_scale_factor(str(two_level_svd)) == 2
    assert pixels.model_scale_factor("tiny") == 8 and pixels.model_scale_factor("x", weights="random") == 8
    assert pixels.pixel_multiple(2) == 8 and pixels.pixel_multiple(16) == 16


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_level_vae_runs_32x48_bitwise_as_diffusers(two_level_svd, tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    done = ppsvd_cli(
        "run",
        "--model-id",
        str(two_level_svd),
        "--height",
        str(HEIGHT),
        "--width",
        str(WIDTH),
        "--num-frames",
        str(FRAMES),
        "--num-inference-steps",
        str(STEPS),
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--output-dir",
        str(tmp_path),
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    got = read_latents(run_dir)[0]

    torch.set_num_threads(1)  # what each ppsvd stage runs with (OMP_NUM_THREADS=1)
    pipe = StableVideoDiffusionPipeline.from_pretrained(two_level_svd)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        builtin_image(WIDTH, HEIGHT),  # ppsvd's default input at the run's size
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        fps=6,  # ppsvd's default conditioning (diffusers' is 7); the rest are the same defaults
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="latent",
    ).frames
    assert got.shape == want.shape == (1, FRAMES, 4, HEIGHT // 2, WIDTH // 2)
    assert torch.equal(got, want)


def test_an_impossible_size_is_refused_with_the_models_factor(two_level_svd, tmp_path):
    done = ppsvd_cli(
        "run", "--model-id", str(two_level_svd), "--height", "36", "--width", str(WIDTH), "--device", "cpu",
        "--output-dir", str(tmp_path), timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--height 36 is not divisible by 8" in lines[0] and f"VAE scale factor of {two_level_svd} is 2" in lines[0]
    assert "use --height 32 or 40" in lines[0]
    assert not any(tmp_path.iterdir())
