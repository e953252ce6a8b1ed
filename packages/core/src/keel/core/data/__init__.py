"""Data for keel: offline corpora, tokenizers, DataModules and resumable loaders.

The names below are imported on first use, so ``from keel.core.data import build_english_corpus``
does not pay for importing torch and lightning; the DataModule and loaders load them when asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DOC_SEPARATOR",
    "EOT",
    "SOURCES",
    "ResumableDataLoader",
    "ResumableSampler",
    "SourceUnavailable",
    "TextDataModule",
    "TokenBlockDataset",
    "available_sources",
    "build_english_corpus",
    "cached_tokens",
    "check_text_file",
    "describe_corpus",
    "load_or_train_tokenizer",
    "read_documents",
    "resumable_loader",
    "tokenize_file",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]

_MODULE_OF = {
    **dict.fromkeys(["SOURCES", "SourceUnavailable", "available_sources"], "corpora"),
    **dict.fromkeys(["build_english_corpus", "describe_corpus"], "corpora"),
    **dict.fromkeys(["ResumableDataLoader", "ResumableSampler", "resumable_loader"], "sampling"),
    **dict.fromkeys(["TextDataModule", "TokenBlockDataset", "cached_tokens", "tokenize_file"], "text"),
    **dict.fromkeys(["DOC_SEPARATOR", "EOT", "check_text_file", "read_documents"], "tokenizer"),
    **dict.fromkeys(["load_or_train_tokenizer", "tokenizer_fingerprint", "train_bpe_tokenizer"], "tokenizer"),
}

if TYPE_CHECKING:
    from keel.core.data.corpora import (
        SOURCES,
        SourceUnavailable,
        available_sources,
        build_english_corpus,
        describe_corpus,
    )
    from keel.core.data.sampling import ResumableDataLoader, ResumableSampler, resumable_loader
    from keel.core.data.text import TextDataModule, TokenBlockDataset, cached_tokens, tokenize_file
    from keel.core.data.tokenizer import (
        DOC_SEPARATOR,
        EOT,
        check_text_file,
        load_or_train_tokenizer,
        read_documents,
        tokenizer_fingerprint,
        train_bpe_tokenizer,
    )


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
