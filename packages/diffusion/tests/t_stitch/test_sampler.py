"""T-Stitch: who answers when, and that the end points are exactly the two models' own samplers."""

from __future__ import annotations

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.sampling import training_scheduler
from keel.diffusion.t_stitch import StitchedModel, t_stitch_sample
from keel.diffusion.testing import tiny_diffusion_module


def recorder(name: str, log: list[tuple[str, int]]):  # type: ignore[no-untyped-def]
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log.append((name, int(t[0])))
        return torch.zeros_like(x)

    return fn


def test_switch_is_on_the_original_timestep() -> None:
    # DDIM's 10 steps visit t = 900, 800, ..., 0; ratio 0.3 gives the small model t/1000 >= 0.7
    log: list[tuple[str, int]] = []
    stitched = StitchedModel(recorder("small", log), recorder("large", log), small_fraction=0.3)
    for t in range(900, -1, -100):
        stitched(torch.zeros(2, 1, 2, 2), torch.full((2,), t))
    assert log == [("small", 900), ("small", 800), ("small", 700)] + [("large", t) for t in range(600, -1, -100)]
    assert stitched.calls == {"small": 3, "large": 7}


def test_step_switching_counts_steps() -> None:
    log: list[tuple[str, int]] = []
    stitched = StitchedModel(recorder("small", log), recorder("large", log), 0.4, num_steps=5, switch="step")
    for t in (999, 5, 5, 5, 5):  # timesteps do not matter here
        stitched(torch.zeros(1, 1, 2, 2), torch.full((1,), t))
    assert [name for name, _ in log] == ["small", "small", "large", "large", "large"]


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_small_share_grows_with_the_ratio(ratio: float) -> None:
    stitched = StitchedModel(lambda x, t: x, lambda x, t: x, ratio)
    for t in range(980, -1, -20):  # 50 steps
        stitched(torch.zeros(1), torch.tensor([t]))
    assert stitched.calls["small"] == sum(1 for t in range(980, -1, -20) if t / 1000 >= 1 - ratio)
    if ratio == 0.0:
        assert stitched.calls["small"] == 0
    if ratio == 1.0:
        assert stitched.calls["large"] == 0


def test_end_points_are_the_plain_samplers() -> None:
    small, large = tiny_diffusion_module(seed=1, width=4), tiny_diffusion_module(seed=2)
    labels = torch.arange(3)
    for ratio, model in ((0.0, large), (1.0, small)):
        stitched, calls = t_stitch_sample(
            small, large, ratio, 3, labels, steps=4, generator=torch.Generator().manual_seed(0)
        )
        plain = model.sample(3, labels, steps=4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(stitched, plain)
        assert calls["small" if ratio else "large"] == 4
    mixed, calls = t_stitch_sample(small, large, 0.5, 3, labels, steps=4, generator=torch.Generator().manual_seed(0))
    assert calls == {"small": 2, "large": 2}
    assert not torch.allclose(mixed, plain)


def test_models_with_different_schedules_are_refused() -> None:
    small = tiny_diffusion_module(noise_scheduler=training_scheduler(prediction_type="v_prediction"))
    with pytest.raises(ConfigError, match="prediction_type"):
        t_stitch_sample(small, tiny_diffusion_module(), 0.5, 2, torch.arange(2), steps=2)
    with pytest.raises(ConfigError, match="small_fraction"):
        StitchedModel(lambda x, t: x, lambda x, t: x, 1.5)
