"""The NUWA-XL benchmark run after testing: long videos both ways, timed and scored, on one machine.

For each of the first ``videos`` test videos, the trained network generates a video of ``frames``
frames with the same per-frame prompts (the digit's label), once with NUWA-XL's parallel coarse-to-fine
tree and once autoregressively, on the same hardware, one method after the other. Measured per method:

- cost: denoising loops run one after another (``loops``), clips denoised (``clips``), wall-clock
  seconds per video (``seconds``) and this process's CPU seconds (``cpu_seconds``);
- frame quality against the real frames of the same test videos (same digits, same length), on the
  features of a digit classifier trained on frames of the training digits moving as in the videos
  (:func:`keel.diffusion.eval.metrics.evaluate_images`): Frechet distance ``fd``, ``precision``,
  ``recall``;
- temporal consistency (:mod:`keel.diffusion.eval.video`): identity accuracy / consistency / drift and
  motion acceleration, at seams and elsewhere.

The same temporal measures of the real test videos (``real_*``) say what a perfect generator scores.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from keel.core.errors import ConfigError, DataError
from keel.diffusion.data.images import to_uint8
from keel.diffusion.eval.classifier import DigitClassifier, cached_digit_classifier, train_digit_classifier
from keel.diffusion.eval.metrics import evaluate_images
from keel.diffusion.eval.video import predict_identities, temporal_consistency
from keel.diffusion.nuwa_xl.inference import GeneratedVideo, depth_for, generate_autoregressive, generate_parallel
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet

METHODS = ("parallel", "autoregressive")


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_real_frames(
    videos: list[Any], count: int, seed: int, max_frame: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` frames drawn uniformly from ``videos`` (each with a ``label``), with their labels.

    Only frames before ``max_frame`` are drawn when it is given.
    """
    if not videos or not all(hasattr(v, "label") for v in videos):
        raise DataError("the NUWA-XL benchmark needs labelled videos (MovingDigitsDataModule)")
    rng = np.random.default_rng(seed)
    owners = rng.integers(len(videos), size=count)
    frames, labels = [], []
    for owner in np.unique(owners):
        video = videos[int(owner)]
        picks = rng.integers(min(video.num_frames, max_frame or video.num_frames), size=int((owners == owner).sum()))
        frames.append(video.frames(picks.tolist()))
        labels.append(torch.full((len(picks),), video.label, dtype=torch.int64))
    return torch.cat(frames), torch.cat(labels)


def save_strips(videos: dict[str, torch.Tensor], seams: list[int], path: Path, shown: int = 16) -> Path:
    """One image: for each video (a row), ``shown`` frames spread over it, then ``shown`` around a seam."""
    length = min(len(v) for v in videos.values())
    spread = np.linspace(0, length - 1, shown).round().astype(int).tolist()
    middle = seams[len(seams) // 2] if seams else length // 2
    start = int(np.clip(middle - shown // 2, 0, max(0, length - shown)))
    close = list(range(start, min(length, start + shown)))
    rows = []
    for frames in videos.values():
        pixels = to_uint8(frames[spread + close]).float().mean(1)  # grey [n, H, W]
        gap = torch.full((pixels.shape[1], 4), 128.0)
        tiles = [*pixels[: len(spread)], gap, *pixels[len(spread) :]]
        rows.append(torch.cat([torch.cat([t, torch.full((t.shape[0], 1), 64.0)], 1) for t in tiles], 1))
    rows = [torch.cat([r, torch.full((2, r.shape[1]), 64.0)]) for r in rows]
    Image.fromarray(torch.cat(rows).clamp(0, 255).byte().numpy()).resize(
        (rows[0].shape[1] * 3, sum(r.shape[0] for r in rows) * 3), Image.NEAREST
    ).save(path)
    return path


class LongVideoEvaluation:
    """Generate long test videos with NUWA-XL and autoregressively; return what each cost and scores.

    Args:
        frames: Frames per generated video (the paper: 1,024).
        videos: Test videos to generate, each way.
        steps: Sampler steps per denoising loop.
        context_frames: Frames the autoregressive baseline carries from one clip to the next.
        chunk_size: At most this many clips per batched loop in the parallel method (None: no cap).
        classifier_steps: Training steps of the frame classifier.
        classifier_frames: Frames of training digits the classifier learns from (one per fresh video,
            see :meth:`MovingDigitsDataModule.labelled_frames`).
        classifier_cache_dir: Folder to cache the classifier in, shared by runs on the same data (None:
            train it in every run).
        real_frames: Real frames of the same test videos (their first ``frames``) the Frechet distance
            compares with.
        seed: Seed of the generation noise and of the frame draws.
    """

    def __init__(
        self,
        frames: int = 1024,
        videos: int = 2,
        steps: int = 25,
        context_frames: int = 1,
        chunk_size: int | None = None,
        classifier_steps: int = 300,
        classifier_frames: int = 4096,
        classifier_cache_dir: str | None = None,
        real_frames: int = 2048,
        seed: int = 0,
    ) -> None:
        self.frames, self.videos, self.steps = frames, videos, steps
        self.context_frames, self.chunk_size = context_frames, chunk_size
        self.classifier_steps, self.classifier_frames = classifier_steps, classifier_frames
        self.classifier_cache_dir = classifier_cache_dir
        self.real_frames, self.seed = real_frames, seed

    def classifier(self, datamodule: Any) -> DigitClassifier:
        """The frame classifier, trained on real frames of training digits (or read from the cache)."""
        images, labels = datamodule.labelled_frames(self.classifier_frames, self.seed)
        if self.classifier_cache_dir is None:
            return train_digit_classifier(images, labels, steps=self.classifier_steps, batch_size=64, seed=self.seed)
        hp = datamodule.hparams
        settings = {
            "data": f"moving-digits:{hp.digit_source}",
            "split_seed": hp.split_seed,
            "periods": list(hp.periods),
            "canvas": hp.canvas_size,
            "digit": hp.digit_size,
            "frames": self.classifier_frames,
            "batch_size": 64,
        }
        return cached_digit_classifier(
            self.classifier_cache_dir, images, labels, settings, steps=self.classifier_steps, seed=self.seed
        )

    def generate(
        self, method: str, network: MaskedTemporalUNet, sampler: SchedulerMixin, plan: torch.Tensor, seed: int
    ) -> tuple[GeneratedVideo, float, float]:
        """One video by ``method``, the wall-clock seconds it took and this process's CPU seconds.

        CPU seconds are the contention-proof companion of wall-clock time on a shared CPU: they count
        only the work this process did (on a GPU they count only the host's share).
        """
        device = next(network.parameters()).device
        _synchronise(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        if method == "parallel":
            video = generate_parallel(network, sampler, self.frames, self.steps, plan, seed, self.chunk_size)
        else:
            video = generate_autoregressive(network, sampler, self.frames, self.steps, plan, seed, self.context_frames)
        _synchronise(device)
        return video, time.perf_counter() - started, time.process_time() - cpu_started

    @torch.no_grad()
    def __call__(
        self, network: MaskedTemporalUNet, sampler: SchedulerMixin, datamodule: Any, out_dir: Path
    ) -> dict[str, float]:
        """Run the benchmark; writes ``generation.json`` and ``videos.png`` into ``out_dir``.

        Returns:
            ``<method>_<measure>`` for both methods, ``real_<measure>``, ``loop_ratio`` (autoregressive
            loops over parallel loops) and ``time_reduction`` (1 - parallel seconds / autoregressive).
        """
        network.eval()
        if not hasattr(datamodule, "labelled_frames"):
            raise DataError("the NUWA-XL benchmark needs labelled digit videos (MovingDigitsDataModule)")
        trained_depth = datamodule.hparams.depth
        if depth_for(self.frames, network.frames) != trained_depth:
            raise ConfigError(
                f"{self.frames} frames need depth {depth_for(self.frames, network.frames)} with L={network.frames}, "
                f"but the network was trained on depth {trained_depth}: its level spacings would be unseen"
            )
        tests = datamodule.test_videos[: self.videos]
        if len(tests) < self.videos or tests[0].num_frames < self.frames:
            raise DataError(f"the benchmark needs {self.videos} test videos of {self.frames} frames")
        # Lightning tests under inference mode; the classifier is trained here, so it needs autograd back
        with torch.inference_mode(False), torch.enable_grad():
            classifier = self.classifier(datamodule)
        # the reference is the real counterpart of what is generated: the first N frames of the same videos
        real, real_labels = sample_real_frames(tests, self.real_frames, self.seed + 1, max_frame=self.frames)
        # one short call first, so neither method pays for first-call set-up inside its timing
        generate_parallel(network, sampler, network.frames, 1, seed=self.seed)
        per_video: dict[str, list[dict[str, float]]] = {m: [] for m in ("real", *METHODS)}
        generated: dict[str, list[torch.Tensor]] = {m: [] for m in METHODS}
        strips: dict[str, torch.Tensor] = {}
        seams: list[int] = []
        for number, test in enumerate(tests):
            plan = test.conditions(range(self.frames))
            for method in METHODS:
                video, seconds, cpu_seconds = self.generate(method, network, sampler, plan, self.seed + number)
                scores = temporal_consistency(video.frames, classifier, test.label, video.seams)
                scores.update(loops=video.sequential_loops, clips=video.clips, seconds=seconds, cpu_seconds=cpu_seconds)
                per_video[method].append(scores)
                generated[method].append(video.frames)
                seams = video.seams if method == "parallel" else seams
                if number == 0:
                    strips[method] = video.frames
            truth = test.frames(range(self.frames))
            per_video["real"].append(temporal_consistency(truth, classifier, test.label, seams))
            if number == 0:
                strips = {"real": truth, **strips}
        results: dict[str, float] = {}
        for method, rows in per_video.items():
            for key in rows[0]:
                results[f"{method}_{key}"] = statistics.fmean(row[key] for row in rows)
        for method in METHODS:
            fake = torch.cat(generated[method])
            labels = torch.cat([torch.full((self.frames,), t.label, dtype=torch.int64) for t in tests])
            quality = evaluate_images(classifier, real, fake, labels)
            results.update({f"{method}_{k}": v for k, v in quality.items()})
        results["real_accuracy"] = (predict_identities(classifier, real) == real_labels).float().mean().item()
        results["frames"] = float(self.frames)
        results["loop_ratio"] = results["autoregressive_loops"] / results["parallel_loops"]
        ar_seconds = results["autoregressive_seconds"]
        results["time_reduction"] = 1 - results["parallel_seconds"] / ar_seconds if ar_seconds > 0 else math.nan
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "generation.json").write_text(json.dumps({"summary": results, "per_video": per_video}, indent=2))
        save_strips(strips, seams, out_dir / "videos.png")
        return results
