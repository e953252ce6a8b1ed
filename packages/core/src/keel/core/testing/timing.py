"""Wall-clock timing for benchmarks: seconds of one call, with queued CUDA work counted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def seconds(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes, CUDA kernels included (the device is synchronised before and after)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start
