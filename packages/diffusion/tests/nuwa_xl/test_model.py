from __future__ import annotations

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet


@pytest.fixture(scope="module")
def network() -> MaskedTemporalUNet:
    torch.manual_seed(0)
    return MaskedTemporalUNet(
        frames=4,
        sample_size=8,
        block_out_channels=(8, 16),
        attention_levels=(1,),
        norm_num_groups=4,
        num_conditions=10,
        condition_dim=4,
    ).eval()


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(batch, 4, 1, 8, 8, generator=generator),
        "timestep": torch.full((batch,), 500),
        "condition_frames": torch.randn(batch, 4, 1, 8, 8, generator=generator),
        "visible": torch.tensor([[True, False, False, True]] * batch),
        "spacing": torch.full((batch,), 3),
        "conditions": torch.full((batch, 4), 2),
    }


@torch.no_grad()
def test_predicts_noise_for_every_frame(network: MaskedTemporalUNet) -> None:
    assert network(**_inputs()).shape == (2, 4, 1, 8, 8)


@torch.no_grad()
def test_only_visible_condition_frames_are_read(network: MaskedTemporalUNet) -> None:
    base = _inputs()
    reference = network(**base)
    hidden_changed = {**base, "condition_frames": base["condition_frames"].clone()}
    hidden_changed["condition_frames"][:, 1:3] += 5.0  # masked frames: zeros go in, whatever they hold
    torch.testing.assert_close(network(**hidden_changed), reference)
    shown_changed = {**base, "condition_frames": base["condition_frames"].clone()}
    shown_changed["condition_frames"][:, 0] += 1.0
    assert not torch.allclose(network(**shown_changed), reference)
    unmasked = {**base, "visible": torch.zeros(2, 4, dtype=torch.bool)}
    assert not torch.allclose(network(**unmasked), reference), "the mask itself is an input"


@torch.no_grad()
def test_spacing_and_prompts_condition_the_output(network: MaskedTemporalUNet) -> None:
    base = _inputs()
    reference = network(**base)
    assert not torch.allclose(network(**{**base, "spacing": torch.full((2,), 121)}), reference)
    assert not torch.allclose(network(**{**base, "conditions": torch.full((2, 4), 7)}), reference)
    later = base["conditions"].clone()
    later[:, -1] = 7  # the prompts are per frame, in order
    assert not torch.allclose(network(**{**base, "conditions": later}), reference)


def test_bad_shapes_and_settings_are_config_errors(network: MaskedTemporalUNet) -> None:
    with pytest.raises(ConfigError, match="built for 4 frames"):
        network(**{**_inputs(), "sample": torch.randn(2, 5, 1, 8, 8)})
    with pytest.raises(ConfigError, match="norm_num_groups"):
        MaskedTemporalUNet(block_out_channels=(12, 24), norm_num_groups=8)
    with pytest.raises(ConfigError, match="cannot be halved"):
        MaskedTemporalUNet(sample_size=10, block_out_channels=(8, 16, 16), norm_num_groups=8)
