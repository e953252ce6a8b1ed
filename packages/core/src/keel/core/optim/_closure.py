"""What every optimizer's ``step`` does first: evaluate the closure, with gradients enabled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def evaluate_closure(closure: Callable[[], Any] | None) -> Any:
    """The closure's loss (``None`` without one); ``step`` runs under ``no_grad``, the closure must not."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
