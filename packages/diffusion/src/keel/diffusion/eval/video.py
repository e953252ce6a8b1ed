"""Temporal consistency of generated videos: does the content keep its identity, does it move smoothly?

Two families of measures, each returning plain floats in a dict:

- **Identity agreement** (:func:`identity_agreement`): a frame classifier names the content of every
  frame; a consistent video keeps one identity from the first frame to the last, and it is the planned
  one. This is the long-range consistency NUWA-XL claims for its global keyframes (Sec. 4): errors of
  an autoregressive generator accumulate, so its identity can drift over the video.
- **Motion smoothness** (:func:`motion_smoothness`): the intensity-weighted centre of mass of each
  frame gives the content's trajectory; its second differences (acceleration, pixels per frame
  squared) are small for smooth motion. At *seams*, frames whose neighbours were made by different
  denoising calls, a generator that ignores its context makes a kink; ``boundary_ratio`` compares the
  acceleration at seams with the acceleration elsewhere (1: seams are invisible).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """The intensity-weighted centre ``[T, 2]`` (row, column; pixel i covers [i, i + 1)) of each frame.

    Args:
        frames: ``[T, C, H, W]`` in [-1, 1], bright content on a dark (-1) background. A blank frame's
            centre is the canvas centre.
    """
    weight = ((frames.float() + 1) / 2).clamp(0, 1).mean(dim=1)  # [T, H, W]
    height, width = weight.shape[-2:]
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    mass = weight.sum(dim=(1, 2))
    blank = mass <= 1e-6
    safe = mass.clamp(min=1e-6)
    centre = torch.stack([(weight.sum(2) * rows).sum(1) / safe, (weight.sum(1) * cols).sum(1) / safe], dim=1)
    centre[blank] = torch.tensor([height / 2, width / 2])
    return centre


def motion_smoothness(trajectory: torch.Tensor, seams: Sequence[int] = ()) -> dict[str, float]:
    """Speed, acceleration and the seams' share of it, from a trajectory ``[T, 2]`` (T >= 3).

    Args:
        trajectory: Positions per frame (e.g. :func:`centre_of_mass`).
        seams: Frames whose two neighbours come from different denoising calls.

    Returns:
        ``speed`` (mean |first difference|, px/frame), ``acceleration`` (mean |second difference|,
        px/frame^2, at every frame), ``boundary_acceleration`` (at the seams), ``boundary_jump`` (mean
        |step| from a seam to the next frame, the first one of a new call) and ``boundary_ratio``
        (``boundary_acceleration`` over the acceleration at the other frames). The seam entries are
        NaN when there are no seams.
    """
    trajectory = trajectory.float()
    if len(trajectory) < 3:
        raise ValueError(f"a trajectory needs at least 3 frames, got {len(trajectory)}")
    velocity = trajectory[1:] - trajectory[:-1]
    acceleration = (velocity[1:] - velocity[:-1]).norm(dim=1)  # entry i is centred on frame i + 1
    scores = {"speed": velocity.norm(dim=1).mean().item(), "acceleration": acceleration.mean().item()}
    inner = [s for s in seams if 1 <= s <= len(trajectory) - 2]
    nan = float("nan")
    if not inner:
        return {**scores, "boundary_acceleration": nan, "boundary_jump": nan, "boundary_ratio": nan}
    at_seams = torch.zeros(len(acceleration), dtype=torch.bool)
    at_seams[torch.tensor(inner) - 1] = True
    elsewhere = acceleration[~at_seams].mean().item() if (~at_seams).any() else nan
    boundary = acceleration[at_seams].mean().item()
    scores["boundary_acceleration"] = boundary
    scores["boundary_jump"] = velocity[torch.tensor(inner)].norm(dim=1).mean().item()
    scores["boundary_ratio"] = boundary / elsewhere if elsewhere > 0 else nan
    return scores


def identity_agreement(predicted: torch.Tensor, planned: torch.Tensor | int) -> dict[str, float]:
    """How well a video's per-frame identities agree with each other and with the plan.

    Args:
        predicted: ``[T]`` identity predicted for each frame.
        planned: ``[T]`` or one identity: what each frame should show.

    Returns:
        ``identity_accuracy`` (share of frames showing the planned identity), ``identity_consistency``
        (share showing the video's most frequent identity), ``identity_switches`` (share of adjacent
        frame pairs whose identities differ) and ``identity_drift`` (accuracy over the first quarter of
        the video minus accuracy over the last quarter: positive when the video loses its identity).
    """
    predicted = predicted.reshape(-1).long()
    planned = torch.as_tensor(planned).long().expand_as(predicted)
    correct = (predicted == planned).float()
    quarter = max(1, len(predicted) // 4)
    return {
        "identity_accuracy": correct.mean().item(),
        "identity_consistency": (predicted == predicted.mode().values).float().mean().item(),
        "identity_switches": (predicted[1:] != predicted[:-1]).float().mean().item() if len(predicted) > 1 else 0.0,
        "identity_drift": (correct[:quarter].mean() - correct[-quarter:].mean()).item(),
    }


@torch.no_grad()
def predict_identities(classifier: nn.Module, frames: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The classifier's identity (argmax) for each frame of ``[T, C, H, W]``."""
    classifier.eval()
    return torch.cat(
        [classifier(frames[i : i + batch_size].float()).argmax(-1) for i in range(0, len(frames), batch_size)]
    )


def temporal_consistency(
    frames: torch.Tensor, classifier: nn.Module, planned: torch.Tensor | int, seams: Sequence[int] = ()
) -> dict[str, float]:
    """:func:`identity_agreement` and :func:`motion_smoothness` of one video ``[T, C, H, W]``."""
    identities = identity_agreement(predict_identities(classifier, frames), planned)
    return {**identities, **motion_smoothness(centre_of_mass(frames), seams)}
