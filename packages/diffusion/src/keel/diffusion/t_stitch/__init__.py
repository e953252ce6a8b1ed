"""T-Stitch: a small denoiser for the early, noisy steps and a large one for the rest, training-free.

Pan et al. 2024, "T-Stitch: Accelerating Sampling in Pre-trained Diffusion Models with Trajectory
Stitching", arXiv 2402.14167.
"""

from keel.diffusion.t_stitch.sampler import StitchedModel, check_compatible, t_stitch_sample

__all__ = ["StitchedModel", "check_compatible", "t_stitch_sample"]
