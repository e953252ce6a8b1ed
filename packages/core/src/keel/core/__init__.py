"""keel-core: the runtime every keel package builds on.

The public entry points are the ``keel`` command (:mod:`keel.core.cli`), the config loader
(:mod:`keel.core.config`), the object builder (:mod:`keel.core.instantiate`) and the trainer
assembly (:mod:`keel.core.trainer`). Heavy modules (torch, lightning) are imported lazily by the
submodules that need them, so ``import keel.core`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keel-core")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
