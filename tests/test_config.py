import pytest

from ppsvd.config import RunConfig, check_latent_shape, parse_int_list
from ppsvd.errors import ConfigError


def test_defaults_are_the_guides():
    cfg = RunConfig().validate()
    assert cfg.total_steps == 28 and cfg.latent_shape == (1, 4, 14, 64, 64)
    assert cfg.num_samples == 1 and cfg.seed == 0 and cfg.fps == 6 and cfg.motion_bucket_id == 127
    assert cfg.resolved_dtype == "fp32" and cfg.resolved_transport == "gloo"
    assert RunConfig(device="cuda").resolved_dtype == "fp16"
    assert RunConfig(device="cuda").resolved_transport == "nccl"


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"total_steps": 3, "nproc": 4}, "--total-steps 3"),
        ({"num_samples": 0}, "--num-samples 0"),
        ({"nproc": -1}, "--nproc -1"),
        ({"latent_shape": (1, 4, 14, 64)}, "five integers"),
        ({"latent_shape": (1, 4, 0, 64, 64)}, "non-positive"),
        ({"transport": "mpi"}, "--transport 'mpi'"),
        ({"dtype": "fp8"}, "--dtype 'fp8'"),
        ({"device": "tpu"}, "--device 'tpu'"),
        ({"transport": "nccl"}, "needs --device cuda"),
        ({"motion_bucket_id": 300}, "--motion-bucket-id 300"),
        ({"step_ms": -1}, "--step-ms -1"),
        ({"seed": -5}, "--seed -5"),
        ({"min_guidance_scale": 4.0}, "swap"),
    ],
)
def test_bad_input_is_one_line_with_the_value(changes, needle):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes).validate()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_device_checks_refuse_two_stages_on_one_gpu():
    with pytest.raises(ConfigError, match="never two stages on one GPU"):
        RunConfig(device="cuda", nproc=4).check_devices(cuda_device_count=2, local_world_size=4)
    with pytest.raises(ConfigError, match="no CUDA device"):
        RunConfig(device="cuda").check_devices(cuda_device_count=0, local_world_size=1)


def test_config_round_trips_through_json():
    cfg = RunConfig(nproc=3, latent_shape=(1, 4, 2, 8, 8), images=("a.png",))
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_int_lists():
    assert parse_int_list("--gpus", "1,2,4,7") == [1, 2, 4, 7]
    with pytest.raises(ConfigError, match="--gpus"):
        parse_int_list("--gpus", "1,x")
    check_latent_shape([1, 4, 14, 64, 64])
