from __future__ import annotations

import pytest
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from keel.core.errors import ConfigError
from keel.diffusion.nuwa_xl import inference
from keel.diffusion.nuwa_xl.inference import (
    autoregressive_loops,
    denoise_clips,
    depth_for,
    generate_autoregressive,
    generate_parallel,
)
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.sampling import make_scheduler, training_scheduler

STEPS = 3


@pytest.fixture(scope="module")
def network() -> MaskedTemporalUNet:
    torch.manual_seed(0)
    tiny = MaskedTemporalUNet(
        frames=5,
        sample_size=8,
        block_out_channels=(8, 16),
        attention_levels=(),
        norm_num_groups=4,
        num_conditions=10,
        condition_dim=4,
    )
    return tiny.eval()


@pytest.fixture
def sampler() -> SchedulerMixin:
    return make_scheduler("ddim", training_scheduler())


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Every denoising loop's inputs and outputs, in call order."""
    calls: list[dict[str, torch.Tensor]] = []
    original = inference.denoise_clips

    def spy(network, scheduler, noise, condition_frames, visible, spacing, conditions, steps):
        out = original(network, scheduler, noise, condition_frames, visible, spacing, conditions, steps)
        calls.append(
            {
                "condition": condition_frames.clone(),
                "visible": visible.clone(),
                "spacing": spacing.clone(),
                "conditions": None if conditions is None else conditions.clone(),
                "out": out.clone(),
            }
        )
        return out

    monkeypatch.setattr(inference, "denoise_clips", spy)
    return calls


def test_depth_and_loop_arithmetic() -> None:
    assert depth_for(1024, 12) == 3  # 12 -> 122 -> 1332 frames
    assert depth_for(1332, 12) == 3
    assert depth_for(1333, 12) == 4
    assert depth_for(12, 12) == 1
    assert depth_for(64, 5) == 3
    assert depth_for(3376, 16) == 3
    assert autoregressive_loops(1024, 12, 1) == 93  # 1 + ceil(1012 / 11)
    assert autoregressive_loops(12, 12, 1) == 1
    assert autoregressive_loops(64, 5, 2) == 1 + 20
    with pytest.raises(ConfigError):
        depth_for(1, 12)
    with pytest.raises(ConfigError):
        autoregressive_loops(100, 5, 5)


def test_given_frames_come_back_exactly(network: MaskedTemporalUNet, sampler: SchedulerMixin) -> None:
    condition = torch.randn(3, 5, 1, 8, 8)
    visible = torch.tensor([[True, False, False, False, True]] * 3)
    out = denoise_clips(
        network, sampler, torch.randn(3, 5, 1, 8, 8), condition, visible, torch.full((3,), 4), None, STEPS
    )
    assert torch.equal(out[:, 0], condition[:, 0])
    assert torch.equal(out[:, -1], condition[:, -1])
    assert not torch.allclose(out[:, 1:-1], condition[:, 1:-1])


def test_parallel_makes_depth_loops_and_local_calls_keep_the_keyframes(
    network: MaskedTemporalUNet, sampler: SchedulerMixin, recorded: list
) -> None:
    plan = (torch.arange(17) // 3) % 10
    video = generate_parallel(network, sampler, 17, STEPS, plan=plan, seed=1)  # L = 5, depth 2: span 17
    assert video.sequential_loops == 2 == len(recorded)
    assert video.frames.shape == (17, 1, 8, 8)
    keyframes, local = recorded
    assert keyframes["visible"].sum() == 0
    assert keyframes["spacing"].tolist() == [4]
    assert torch.equal(keyframes["conditions"][0], plan[[0, 4, 8, 12, 16]])
    assert local["spacing"].tolist() == [1] * 4
    assert video.clips == 5
    for j in range(4):  # local call j is given global keyframes j and j + 1 as its ends
        assert torch.equal(local["condition"][j, 0], keyframes["out"][0, j])
        assert torch.equal(local["condition"][j, -1], keyframes["out"][0, j + 1])
        assert torch.equal(local["conditions"][j], plan[4 * j : 4 * j + 5])
        torch.testing.assert_close(video.frames[4 * j : 4 * j + 5], local["out"][j], rtol=0, atol=0)
    assert video.seams == [4, 8, 12]


def test_batching_changes_nothing_but_the_loop_count(network: MaskedTemporalUNet, sampler: SchedulerMixin) -> None:
    batched = generate_parallel(network, sampler, 40, STEPS, seed=2)
    one_by_one = generate_parallel(network, sampler, 40, STEPS, seed=2, chunk_size=1)
    torch.testing.assert_close(batched.frames, one_by_one.frames, rtol=0, atol=1e-5)
    assert batched.sequential_loops == 3
    assert one_by_one.sequential_loops == one_by_one.clips == batched.clips
    different = generate_parallel(network, sampler, 40, STEPS, seed=3)
    assert not torch.allclose(batched.frames, different.frames, atol=1e-3)


def test_exact_lengths_trim_without_gaps(network: MaskedTemporalUNet, sampler: SchedulerMixin) -> None:
    video = generate_parallel(network, sampler, 20, STEPS, seed=0)  # depth 3 spans 65 frames
    assert video.frames.shape[0] == 20
    assert video.sequential_loops == 3
    assert video.clips == 1 + 2 + 5, "calls that only make frames past the end are skipped"
    assert (video.frames.abs().sum(dim=(1, 2, 3)) > 0).all(), "every frame was generated"


def test_autoregressive_carries_context_clip_after_clip(
    network: MaskedTemporalUNet, sampler: SchedulerMixin, recorded: list
) -> None:
    video = generate_autoregressive(network, sampler, 20, STEPS, plan=torch.full((20,), 7), seed=0, context_frames=2)
    assert video.sequential_loops == len(recorded) == autoregressive_loops(20, 5, 2) == 6  # 1 + ceil(15 / 3)
    assert video.frames.shape[0] == 20
    assert recorded[0]["visible"].sum() == 0
    for before, after in zip(recorded, recorded[1:], strict=False):
        assert after["visible"][0].tolist() == [True, True, False, False, False]
        assert torch.equal(after["condition"][0, :2], before["out"][0, -2:])
        assert after["spacing"].tolist() == [1]
    assert video.seams == [4, 7, 10, 13, 16]


def test_parallel_needs_far_fewer_loops_than_autoregressive(
    network: MaskedTemporalUNet, sampler: SchedulerMixin
) -> None:
    parallel = generate_parallel(network, sampler, 64, 1)
    autoregressive = generate_autoregressive(network, sampler, 64, 1)
    assert parallel.sequential_loops == 3
    assert autoregressive.sequential_loops == 16
    assert parallel.frames.shape == autoregressive.frames.shape == (64, 1, 8, 8)
