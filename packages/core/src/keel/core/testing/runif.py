"""``RunIf``: skip a test unless the machine has what it needs."""

from __future__ import annotations

import importlib.util
import os

import pytest


def RunIf(  # noqa: N802 - reads like a decorator class, as in Lightning's tests
    *,
    min_cuda_gpus: int = 0,
    deepspeed: bool = False,
    modules: tuple[str, ...] = (),
    slow: bool = False,
    distributed: bool = False,
    linux: bool = False,
) -> pytest.MarkDecorator:
    """A ``skipif`` marker that names every missing requirement.

    Args:
        min_cuda_gpus: Needs at least this many CUDA devices (also marks the test ``gpu``).
        deepspeed: Needs the deepspeed package.
        modules: Needs these importable modules.
        slow: Marks the test ``slow``; it runs only with ``--runslow`` or ``KEEL_RUN_SLOW=1``.
        distributed: Marks the test ``distributed`` (several processes over gloo); needs torch.distributed.
        linux: Needs Linux (for signals and fork).
    """
    reasons = []
    if min_cuda_gpus:
        import torch

        if torch.cuda.device_count() < min_cuda_gpus:
            reasons.append(f"needs {min_cuda_gpus} CUDA device(s)")
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        reasons.append("needs deepspeed (pip install 'keel-core[deepspeed]')")
    for module in modules:
        if importlib.util.find_spec(module) is None:
            reasons.append(f"needs the module {module}")
    if distributed:
        import torch.distributed

        if not torch.distributed.is_available():
            reasons.append("needs torch.distributed")
    if linux and os.name != "posix":
        reasons.append("needs Linux")
    marks = pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "requirements met")
    # The category markers are attached through the plugin's collection hook (see plugin.py).
    marks.kwargs["keel_categories"] = tuple(
        name for name, wanted in (("gpu", bool(min_cuda_gpus)), ("slow", slow), ("distributed", distributed)) if wanted
    )
    return marks
