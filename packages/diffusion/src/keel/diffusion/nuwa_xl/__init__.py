"""NUWA-XL: Diffusion over Diffusion for eXtremely Long Video Generation (Yin et al. 2023, arXiv 2303.12346).

A global diffusion model draws keyframes over the whole time range; local diffusion models then fill
the frames between adjacent keyframes, recursively, so a level's segments are generated in parallel
and a video of N frames takes O(log N) sequential denoising loops instead of O(N).

- :class:`MaskedTemporalUNet` (``model.py``): the Masked Temporal Diffusion network.
- :class:`NuwaXLModule` (``module.py``): trains it on long videos, global and local tasks together.
- ``inference.py``: :func:`generate_parallel` (coarse-to-fine) and :func:`generate_autoregressive`
  (the baseline), each returning the video and its count of sequential loops.
- ``evaluate.py``, ``report.py``, ``bench.py``: the benchmark after testing, the sweep's README table,
  and ``keel diffusion nuwa-bench``.
"""

from keel.diffusion.nuwa_xl.evaluate import LongVideoEvaluation
from keel.diffusion.nuwa_xl.inference import (
    GeneratedVideo,
    autoregressive_loops,
    depth_for,
    generate_autoregressive,
    generate_parallel,
)
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.nuwa_xl.module import NuwaXLModule

__all__ = [
    "GeneratedVideo",
    "LongVideoEvaluation",
    "MaskedTemporalUNet",
    "NuwaXLModule",
    "autoregressive_loops",
    "depth_for",
    "generate_autoregressive",
    "generate_parallel",
]
