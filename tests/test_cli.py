"""Bad input: one line naming the value and the fix, exit code 2, before any worker starts."""

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["simulate", "--total-steps", "3", "--nproc", "4"], "--total-steps 3"),
        (["simulate", "--num-samples", "0"], "--num-samples 0"),
        (["simulate", "--latent-shape", "1", "4", "0", "64", "64"], "non-positive"),
        (["simulate", "--transport", "carrier-pigeon"], "carrier-pigeon"),
        (["simulate", "--dtype", "fp8"], "fp8"),
        (["simulate", "--device", "tpu"], "tpu"),
        (["simulate", "--transport", "nccl"], "needs --device cuda"),
        (["simulate", "--device", "cuda"], "no CUDA device"),
        (["simulate", "--nproc", "0"], "--nproc 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, argv, needle):
    monkeypatch.setattr("ppsvd.runtime.launch.launch", lambda *a, **k: pytest.fail("launched workers on bad input"))
    # The same answers on a machine with a GPU: this test is about input, not the machine.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_wrong_number_of_latent_values_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "simulate", "--latent-shape", "1", "4", "14", "64", "--no-progress")
    assert code == 2


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in ("run", "simulate", "bench", "doctor"):
        assert name in out


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("ppsvd ")


def test_importing_ppsvd_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ppsvd, ppsvd.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
