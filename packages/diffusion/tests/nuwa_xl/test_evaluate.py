from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.data.video import MovingDigitsDataModule
from keel.diffusion.nuwa_xl.evaluate import LongVideoEvaluation
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.sampling import make_scheduler, training_scheduler


def test_benchmark_measures_both_methods_on_the_same_videos(tmp_path: Path) -> None:
    data = MovingDigitsDataModule(
        frames_per_clip=5,
        depth=2,
        train_videos=4,
        eval_videos=2,
        canvas_size=8,
        digit_size=4,
        periods=(6.0, 30.0),
        train_examples=8,
        eval_examples=4,
    )
    data.setup()
    torch.manual_seed(0)
    network = MaskedTemporalUNet(
        frames=5, sample_size=8, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4, condition_dim=4
    )
    sampler = make_scheduler("ddim", training_scheduler())
    evaluation = LongVideoEvaluation(
        frames=17, videos=2, steps=2, classifier_steps=3, classifier_frames=64, real_frames=64
    )
    results = evaluation(network, sampler, data, tmp_path)
    assert results["parallel_loops"] == 2
    assert results["autoregressive_loops"] == 4
    assert results["loop_ratio"] == 2
    assert results["real_boundary_ratio"] == pytest.approx(1.0, abs=0.5), "real motion has no seams"
    assert all(isinstance(v, float) for v in results.values())
    assert math.isfinite(results["parallel_fd"])
    assert math.isfinite(results["autoregressive_seconds"])
    saved = json.loads((tmp_path / "generation.json").read_text())
    assert len(saved["per_video"]["parallel"]) == 2
    assert (tmp_path / "videos.png").is_file()
    with pytest.raises(ConfigError, match="trained on depth 2"):
        LongVideoEvaluation(frames=40, videos=1, classifier_steps=1, classifier_frames=16)(
            network, sampler, data, tmp_path
        )
