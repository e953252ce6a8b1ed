"""Optimizers beyond torch's: Sophia (SophiaG, SophiaH) and SOAP.

Each is a plain :class:`torch.optim.Optimizer` with the official constructor names and defaults,
so any experiment switches to one with a config line such as
``model.optimizer._target_=keel.core.optim.SOAP``.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "SophiaG": "sophia",
    "SophiaH": "sophia",
    "SophiaHessianCallback": "sophia_lightning",
    "refresh_under_deepspeed": "sophia_lightning",
    "SOAP": "soap",
    "Shampoo": "shampoo",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value
