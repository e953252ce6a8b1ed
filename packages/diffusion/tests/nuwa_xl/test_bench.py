from __future__ import annotations

import json

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.cli import main as diffusion_main


def test_tiny_bench_prints_one_json_line_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert diffusion_main(["nuwa-bench", "--tiny", "--frames", "64", "--steps", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == {
        "frames",
        "loops_parallel",
        "loops_autoregressive",
        "seconds_parallel",
        "seconds_autoregressive",
    }
    assert result["frames"] == 64
    assert result["loops_parallel"] == 3  # L = 5: 5 -> 17 -> 65 frames
    assert result["loops_autoregressive"] == 16  # 1 + ceil(59 / 4)
    assert result["seconds_parallel"] > 0
    assert result["seconds_autoregressive"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tiny"], "--frames"),
        (["--frames", "1"], "at least 2"),
        (["--frames", "64", "--steps", "0"], "--steps"),
        (["--frames", "64", "--device", "tpu"], "cpu or cuda"),
        (["--frames", "sixty"], "invalid int"),
        (["--frames", "64", "--fast"], "unrecognized"),
    ],
)
def test_bad_input_is_one_config_error_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        diffusion_main(["nuwa-bench", *argv])
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_says_so() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        diffusion_main(["nuwa-bench", "--frames", "8", "--device", "cuda"])
