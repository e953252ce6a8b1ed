"""keel-diffusion: diffusion models on diffusers, offline image and video data, and three methods.

- :mod:`keel.diffusion.sampling`: training targets (epsilon / v / x0), samplers, the denoising loop.
- :mod:`keel.diffusion.module`: :class:`DiffusionModule`, the shared LightningModule.
- :mod:`keel.diffusion.data`: image and video DataModules over real offline digits and frame folders.
- :mod:`keel.diffusion.eval`: Frechet distance, precision/recall and accuracy on a keel-trained
  digit classifier, and temporal consistency of videos.
- Methods: :mod:`keel.diffusion.nuwa_xl`, :mod:`keel.diffusion.t_stitch`, :mod:`keel.diffusion.cep`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keel-diffusion")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
