"""Long-video generation two ways: NUWA-XL's coarse-to-fine tree, and the autoregressive baseline.

Both use one :class:`~keel.diffusion.nuwa_xl.model.MaskedTemporalUNet` and one denoising loop
(:func:`keel.diffusion.sampling.denoise`) per batch of L-frame clips, and both report how many such
loops had to run one after another: the latency NUWA-XL's parallel generation removes.

**Parallel (NUWA-XL, Sec. 3.1).** The global call draws L keyframes ``(L - 1)^(depth - 1)`` frames
apart; at each further level every pair of adjacent frames becomes the given first and last frame of
a local call that fills the L - 2 frames between them. All calls of a level are independent given the
level above, so they go through ONE batched denoising loop (chunked when ``chunk_size`` caps the batch;
chunks are spread over the CUDA devices when there are several). With ``N_k - 1 = (L - 1)^k`` the tree
needs ``depth = ceil(log_{L-1}(N - 1))`` loops for N frames.

**Exact lengths.** The tree spans ``(L - 1)^depth + 1`` frames; for any other N the video is the
first N frames of that span. Calls that would only make frames past frame N - 1 are skipped (a call
is made only if its first frame comes before frame N - 1, which also guarantees the calls below it
have both ends), so trimming costs at most one partial call per level, never extra loops.
For L = 12, 1,024 frames take 3 loops (global, then 11 and 93 local calls) out of a 1,332-frame span.

**Autoregressive.** The first clip is drawn with no frame given; each further clip is given the
previous clip's last ``context_frames`` frames as its first frames and makes ``L - context_frames``
new ones, one denoising loop after the other: ``1 + ceil((N - L) / (L - context_frames))`` loops.

Noise is drawn per clip from ``(seed, level, clip index)``, so a clip's result does not depend on
which other clips share its batch (with a deterministic sampler such as DDIM): batching changes
the wall-clock time, never the frames.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from keel.core.errors import ConfigError
from keel.diffusion.data.video import level_frame_counts, level_spacings
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.sampling import denoise

AUTOREGRESSIVE_LEVEL = 0  # the noise stream of the autoregressive baseline's clips


@dataclass
class GeneratedVideo:
    """A generated video and what it cost.

    Attributes:
        frames: ``[N, C, H, W]`` in [-1, 1], on the CPU.
        sequential_loops: Denoising loops that ran one after another.
        clips: L-frame clips denoised in all.
        seams: Frames whose two neighbours come from different calls (the given end frames of the
            finest calls): where a seam in the motion would show.
    """

    frames: torch.Tensor
    sequential_loops: int
    clips: int
    seams: list[int] = field(default_factory=list)


def depth_for(num_frames: int, frames_per_clip: int) -> int:
    """The fewest levels whose tree spans ``num_frames``: smallest m with ``(L - 1)^m + 1 >= N``."""
    if num_frames < 2:
        raise ConfigError(f"a video needs at least 2 frames, got {num_frames}")
    if frames_per_clip < 3:
        raise ConfigError(f"NUWA-XL needs at least 3 frames per clip (two ends and one between), got {frames_per_clip}")
    depth = 1
    while level_frame_counts(frames_per_clip, depth)[-1] < num_frames:
        depth += 1
    return depth


def autoregressive_loops(num_frames: int, frames_per_clip: int, context_frames: int = 1) -> int:
    """Sequential loops of the autoregressive baseline: ``1 + ceil((N - L) / (L - context))``."""
    if not 1 <= context_frames < frames_per_clip:
        raise ConfigError(f"context_frames must be in [1, {frames_per_clip - 1}], got {context_frames}")
    return 1 + max(0, math.ceil((num_frames - frames_per_clip) / (frames_per_clip - context_frames)))


def clip_noise(seed: int, level: int, index: int, shape: Sequence[int]) -> torch.Tensor:
    """The starting noise of clip ``index`` of ``level``: a function of these three numbers only."""
    state = np.random.SeedSequence([seed, level, index]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & (2**63 - 1))
    return torch.randn(tuple(shape), generator=generator)


def extend_plan(plan: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Per-frame prompt ids for ``length`` frames; a shorter plan repeats its last entry."""
    if plan is None:
        return None
    plan = torch.as_tensor(plan, dtype=torch.int64).reshape(-1)
    if len(plan) == 0:
        raise ConfigError("the prompt plan is empty")
    if len(plan) >= length:
        return plan[:length]
    return torch.cat([plan, plan[-1:].expand(length - len(plan))])


@torch.no_grad()
def denoise_clips(
    network: MaskedTemporalUNet,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    condition_frames: torch.Tensor,
    visible: torch.Tensor,
    spacing: torch.Tensor,
    conditions: torch.Tensor | None,
    steps: int,
) -> torch.Tensor:
    """ONE denoising loop over a batch of clips; the visible frames come back exactly as given.

    Args:
        network: The MTD network.
        scheduler: The sampler (its timesteps are set here).
        noise: ``[B, L, C, H, W]`` starting noise.
        condition_frames: ``[B, L, C, H, W]``; the visible ones are the visual condition.
        visible: ``[B, L]`` bool.
        spacing: ``[B]`` frame spacing of the clips.
        conditions: ``[B, L]`` prompt ids or None.
        steps: Sampler steps.

    Returns:
        The clips ``[B, L, C, H, W]``.
    """
    # the sampler's arithmetic stays in float32; only the network runs in its own (maybe bf16) precision
    dtype = next(network.parameters()).dtype
    given = condition_frames.to(dtype)

    def model_fn(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return network(sample.to(dtype), timestep, given, visible, spacing, conditions).float()

    sample = denoise(model_fn, scheduler, noise, steps)
    # MTD predicts every frame, but the given ones are facts: keep them bit for bit
    return torch.where(visible[:, :, None, None, None], condition_frames, sample)


def _device_of(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def _run_chunks(
    network: MaskedTemporalUNet,
    scheduler: SchedulerMixin,
    inputs: dict[str, torch.Tensor | None],
    steps: int,
    chunk_size: int | None,
    devices: Sequence[torch.device] | None,
) -> tuple[torch.Tensor, int]:
    """Denoise a level's clips in chunks; returns the clips (CPU) and the loops run one after another."""
    count = len(inputs["noise"])
    size = chunk_size or count
    chunks = [slice(start, start + size) for start in range(0, count, size)]
    devices = list(devices or [_device_of(network)])
    replicas = {}
    for device in devices:  # the network itself serves its own device; other devices get a copy
        same = torch.device(device) == _device_of(network)
        replicas.setdefault(str(device), network if same else copy.deepcopy(network).to(device))

    def run(chunk: slice, device: torch.device, sampler: SchedulerMixin) -> torch.Tensor:
        part = {k: None if v is None else v[chunk].to(device) for k, v in inputs.items()}
        return denoise_clips(
            replicas[str(device)],
            sampler,
            part["noise"],
            part["condition_frames"],
            part["visible"],
            part["spacing"],
            part["conditions"],
            steps,
        ).cpu()

    def run_on(device_index: int) -> list[tuple[int, torch.Tensor]]:
        sampler = copy.deepcopy(scheduler)  # schedulers keep state: one per concurrent loop
        mine = range(device_index, len(chunks), len(devices))
        return [(i, run(chunks[i], devices[device_index], sampler)) for i in mine]

    if len(devices) == 1:
        results = run_on(0)
    else:
        with ThreadPoolExecutor(len(devices)) as pool:  # CUDA kernels release the GIL: devices overlap
            results = [item for part in pool.map(run_on, range(len(devices))) for item in part]
    ordered = torch.cat([clips for _, clips in sorted(results, key=lambda item: item[0])])
    return ordered, math.ceil(len(chunks) / len(devices))


def generate_parallel(
    network: MaskedTemporalUNet,
    scheduler: SchedulerMixin,
    num_frames: int,
    steps: int,
    plan: torch.Tensor | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    devices: Sequence[torch.device] | None = None,
) -> GeneratedVideo:
    """NUWA-XL: keyframes over the whole range, then every level's local calls in one batched loop.

    Args:
        network: The MTD network (global and local in one: the mask tells them apart).
        scheduler: The sampler; a deterministic one (DDIM) makes results independent of batching.
        num_frames: N, frames of the video.
        steps: Sampler steps per loop.
        plan: Per-frame prompt ids ``[N]`` (shorter: the last id repeats), or None.
        seed: Seed of the clips' noise.
        chunk_size: At most this many clips per loop (memory); None: a whole level at once.
        devices: Devices to spread a level's chunks over; None: the network's device.

    Returns:
        The video, ``depth`` loops when no chunking is needed, and the seams.
    """
    length = network.frames
    depth = depth_for(num_frames, length)
    spacings = level_spacings(length, depth)
    span = level_frame_counts(length, depth)[-1]
    video = torch.zeros(span, network.channels, network.sample_size, network.sample_size)
    plan = extend_plan(plan, span)
    offsets = torch.arange(length)
    loops = clips = 0
    for level, spacing in enumerate(spacings, start=1):
        if level == 1:
            starts = torch.zeros(1, dtype=torch.int64)
            visible = torch.zeros(1, length, dtype=torch.bool)
        else:
            parent = spacings[level - 2]
            starts = torch.arange(0, span - 1, parent)
            starts = starts[starts < num_frames - 1]  # calls whose frames all lie past the video are skipped
            visible = torch.zeros(len(starts), length, dtype=torch.bool)
            visible[:, 0] = visible[:, -1] = True
        indices = starts[:, None] + offsets[None] * spacing  # [clips, L] video frame of each clip frame
        noise = torch.stack([clip_noise(seed, level, i, (length, *video.shape[1:])) for i in range(len(starts))])
        inputs = {
            "noise": noise,
            "condition_frames": video[indices],
            "visible": visible,
            "spacing": torch.full((len(starts),), spacing),
            "conditions": None if plan is None else plan[indices],
        }
        made, level_loops = _run_chunks(network, scheduler, inputs, steps, chunk_size, devices)
        video[indices.reshape(-1)] = made.reshape(-1, *video.shape[1:])
        loops += level_loops
        clips += len(starts)
    seams = list(range(spacings[-2], num_frames - 1, spacings[-2])) if depth > 1 else []
    return GeneratedVideo(video[:num_frames].clone(), loops, clips, seams)


def generate_autoregressive(
    network: MaskedTemporalUNet,
    scheduler: SchedulerMixin,
    num_frames: int,
    steps: int,
    plan: torch.Tensor | None = None,
    seed: int = 0,
    context_frames: int = 1,
) -> GeneratedVideo:
    """The baseline: clip after clip, each given the previous clip's last ``context_frames`` frames.

    Every clip is at the finest spacing (1 frame), as a model trained on short clips would be used.

    Args:
        network: The MTD network.
        scheduler: The sampler.
        num_frames: N, frames of the video.
        steps: Sampler steps per loop.
        plan: Per-frame prompt ids ``[N]`` (shorter: the last id repeats), or None.
        seed: Seed of the clips' noise.
        context_frames: Frames carried over from one clip to the next.

    Returns:
        The video, one loop per clip, and the seams (the last carried-over frame of each clip).
    """
    length = network.frames
    total = autoregressive_loops(num_frames, length, context_frames)
    span = length + (total - 1) * (length - context_frames)
    video = torch.zeros(span, network.channels, network.sample_size, network.sample_size)
    plan = extend_plan(plan, span)
    visible = torch.zeros(1, length, dtype=torch.bool)
    seams = []
    for clip in range(total):
        start = 0 if clip == 0 else clip * (length - context_frames)
        if clip == 1:
            visible[:, :context_frames] = True
        if clip > 0:
            seams.append(start + context_frames - 1)
        window = slice(start, start + length)
        made = denoise_clips(
            network,
            scheduler,
            clip_noise(seed, AUTOREGRESSIVE_LEVEL, clip, (length, *video.shape[1:]))[None].to(_device_of(network)),
            video[None, window].to(_device_of(network)),
            visible.to(_device_of(network)),
            torch.ones(1, dtype=torch.int64, device=_device_of(network)),
            None if plan is None else plan[None, window].to(_device_of(network)),
            steps,
        )
        video[window] = made[0].cpu()
    return GeneratedVideo(video[:num_frames].clone(), total, total, [s for s in seams if s < num_frames - 1])
