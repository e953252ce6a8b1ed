"""Testing helpers every keel package reuses: RunIf markers, boring modules, tiny fixtures.

The pytest plugin (:mod:`keel.core.testing.plugin`) is registered through the ``pytest11`` entry
point, so installing keel-core makes the markers and fixtures available in every package's tests.
"""

from keel.core.testing.boring import (
    BoringDataModule,
    BoringModule,
    GradientRecorder,
    RandomTokenDataset,
    SlowDown,
    StepTimer,
)
from keel.core.testing.runif import RunIf

__all__ = [
    "BoringDataModule",
    "BoringModule",
    "GradientRecorder",
    "RandomTokenDataset",
    "RunIf",
    "SlowDown",
    "StepTimer",
]
