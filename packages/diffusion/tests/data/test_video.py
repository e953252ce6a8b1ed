from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keel.core.errors import ConfigError, DataError
from keel.diffusion.data.digits import load_digits, split_indices
from keel.diffusion.data.video import (
    TASKS,
    FrameFolderVideoDataModule,
    LongVideoClips,
    MovingDigitsDataModule,
    glyph,
    level_frame_counts,
    level_spacings,
    make_moving_digit_videos,
    render_digit,
    smooth_trajectory,
)


def test_frame_counts_follow_the_recursion_and_match_the_papers_3376_frames() -> None:
    assert level_frame_counts(16, 3) == [16, 226, 3376]
    counts = level_frame_counts(12, 4)
    for before, after in zip(counts, counts[1:], strict=False):
        assert after == before + (before - 1) * (12 - 2)
    assert level_spacings(12, 3) == [121, 11, 1]
    assert level_spacings(5, 2, frame_step=3) == [12, 3]
    with pytest.raises(ConfigError):
        level_frame_counts(2, 3)


def test_trajectory_is_deterministic_bounded_and_smooth() -> None:
    first = smooth_trajectory(2000, np.random.default_rng(3), 8, 24)
    again = smooth_trajectory(2000, np.random.default_rng(3), 8, 24)
    other = smooth_trajectory(2000, np.random.default_rng(4), 8, 24)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.min() >= 8
    assert first.max() <= 24
    acceleration = np.abs(np.diff(first, n=2, axis=0)).max()
    assert acceleration < 0.2, "a sum of slow sinusoids has no kinks or bounces"
    assert np.abs(np.diff(first, axis=0)).mean() > 0.05, "the digit does move"


def test_rendering_places_the_digit_at_sub_pixel_positions() -> None:
    digit = torch.zeros(4, 4)
    digit[1:3, 1:3] = 1.0
    frames = render_digit(digit, torch.tensor([[8.0, 8.0], [8.0, 9.0], [8.0, 8.5]]), 16)
    columns = torch.arange(16) + 0.5
    centre_x = [(f[0].sum(0) * columns).sum() / f[0].sum() for f in frames]
    assert centre_x[0] == pytest.approx(8.0, abs=1e-4)
    assert centre_x[1] - centre_x[0] == pytest.approx(1.0, abs=1e-4)
    assert centre_x[2] - centre_x[0] == pytest.approx(0.5, abs=1e-4)


def test_moving_digit_videos_are_a_function_of_seed_and_index() -> None:
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    three = make_moving_digit_videos(images, labels, 3, 1100, seed=5)
    two = make_moving_digit_videos(images, labels, 2, 1100, seed=5)
    torch.testing.assert_close(three[1].frames([0, 500, 1099]), two[1].frames([0, 500, 1099]))
    assert three[0].num_frames == 1100
    frames = three[0].frames(range(3))
    assert frames.shape == (3, 1, 32, 32)
    assert frames.min() >= -1
    assert frames.max() <= 1
    assert (three[2].conditions([0, 7]) == three[2].label).all()
    with pytest.raises(ConfigError):
        make_moving_digit_videos(images, labels, 1, 10, seed=0, canvas_size=32, digit_size=15)


def test_long_video_clips_sample_each_level_at_its_spacing() -> None:
    images = np.random.default_rng(1).integers(0, 255, (10, 28, 28), dtype=np.uint8)
    videos = make_moving_digit_videos(images, np.arange(10), 3, 126, seed=0, canvas_size=16, digit_size=8)
    spacings = level_spacings(6, 3)  # [25, 5, 1]: the global level needs 126 frames
    weights = {"global": 1, "local": 1, "start": 1, "continue": 1}
    clips = LongVideoClips(videos, 6, spacings, weights, context_frames=2, length=200, seed=0)
    seen_levels = set()
    for index in range(len(clips)):
        item = clips[index]
        task, level = TASKS[int(item["task"])], int(item["level"])
        seen_levels.add(level)
        assert int(item["spacing"]) == spacings[level - 1]
        expected_level = {"global": {1}, "local": {2, 3}, "start": {3}, "continue": {3}}[task]
        assert level in expected_level
        visible = item["visible"].tolist()
        expected_visible = {
            "global": [False] * 6,
            "start": [False] * 6,
            "local": [True, False, False, False, False, True],
            "continue": [True, True, False, False, False, False],
        }[task]
        assert visible == expected_visible
        video = videos[int(item["video"])]
        indices = [int(item["start"]) + j * int(item["spacing"]) for j in range(6)]
        assert indices[-1] < video.num_frames
        torch.testing.assert_close(item["frames"], video.frames(indices))
        assert (item["conditions"] == video.label).all()
    assert seen_levels == {1, 2, 3}
    torch.testing.assert_close(clips[7]["frames"], clips[7]["frames"])  # deterministic per index


def test_long_video_clips_reject_bad_settings() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    videos = make_moving_digit_videos(images, np.arange(2), 1, 20, seed=0, canvas_size=16, digit_size=8)
    with pytest.raises(ConfigError, match="unknown tasks"):
        LongVideoClips(videos, 5, [4, 1], {"globl": 1.0}, 1, 4, 0)
    with pytest.raises(ConfigError, match="depth >= 2"):
        LongVideoClips(videos, 5, [1], {"local": 1.0}, 1, 4, 0)
    with pytest.raises(DataError, match="no video holds"):
        LongVideoClips(videos, 5, [16, 4, 1], {"global": 1.0}, 1, 4, 0)


def test_moving_digits_datamodule_keeps_train_and_test_digits_apart() -> None:
    module = MovingDigitsDataModule(
        frames_per_clip=5,
        depth=2,
        train_videos=6,
        eval_videos=3,
        canvas_size=16,
        digit_size=8,
        train_examples=8,
        eval_examples=4,
        batch_size=4,
        eval_batch_size=4,
    )
    module.setup()
    assert module.hparams.video_frames == 17
    batch = next(iter(module.train_dataloader()))
    assert batch["frames"].shape == (4, 5, 1, 16, 16)
    assert batch["frames"].min() >= -1
    assert batch["frames"].max() <= 1
    images, labels = load_digits("mnist")
    split = split_indices(labels, 0.1, 0.2, 0)
    glyphs = {name: torch.stack([glyph(images[i], 8) for i in split[name]]) for name in ("train", "test")}
    frames, frame_labels = module.labelled_frames(5, seed=0)
    assert frames.shape == (5, 1, 16, 16)
    assert set(frame_labels.tolist()) <= set(labels[split["train"]].tolist())
    for video in module.test_videos:
        distance = {name: (g - video.digit).abs().amax(dim=(1, 2)).min().item() for name, g in glyphs.items()}
        assert distance["test"] == 0.0
        assert distance["train"] > 0.0


def _write_video(folder: Path, frames: int, prompts: list[dict] | None = None) -> None:
    folder.mkdir(parents=True)
    for t in range(frames):  # no zero padding: natural sorting must put frame_2 before frame_10
        Image.fromarray(np.full((6, 6), 10 * t, dtype=np.uint8)).save(folder / f"frame_{t}.png")
    if prompts is not None:
        (folder / "prompts.json").write_text(json.dumps({"prompts": prompts}))


def test_frame_folder_datamodule_reads_frames_in_time_order(tmp_path: Path) -> None:
    for name in ("ep1", "ep2", "ep3"):
        prompts = [{"start": 0, "end": 10, "text": "Fred walks in."}, {"start": 10, "end": 25, "text": "Wilma waves."}]
        _write_video(tmp_path / name, 20, prompts if name != "ep2" else None)
    module = FrameFolderVideoDataModule(
        str(tmp_path),
        frames_per_clip=4,
        depth=2,
        image_size=6,
        channels=1,
        num_val_videos=1,
        num_test_videos=1,
        task_weights={"global": 1, "local": 1},
        train_examples=12,
        eval_examples=2,
        batch_size=12,
    )
    module.setup()
    assert module.prompts == ["Fred walks in.", "Wilma waves."]
    assert sum(len(v) for v in module.videos.values()) == 3
    batch = next(iter(module.train_dataloader()))
    brightness = (batch["frames"][:, :, 0, 0, 0] + 1) * 127.5  # frame t is filled with 10 t
    expected = (batch["start"][:, None] + torch.arange(4)[None] * batch["spacing"][:, None]) * 10
    torch.testing.assert_close(brightness, expected.float(), atol=0.51, rtol=0)
    video = module.videos["train"][0]
    ids = video.conditions(range(20)).tolist()
    if (video.folder / "prompts.json").is_file():
        assert ids == [1] * 10 + [2] * 10
    else:
        assert ids == [0] * 20


def test_frame_folder_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        FrameFolderVideoDataModule(str(tmp_path / "missing")).setup()
    _write_video(tmp_path / "a", 3)
    (tmp_path / "a" / "prompts.json").write_text('{"prompts": [{"begin": 0}]}')
    for name in ("b", "c"):
        _write_video(tmp_path / name, 3)
    with pytest.raises(DataError, match="prompts.json"):
        FrameFolderVideoDataModule(str(tmp_path), frames_per_clip=3).setup()
