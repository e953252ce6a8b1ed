"""A causal language-modelling DataModule over plain-text splits.

The data folder holds ``train.txt``, ``val.txt`` and optionally ``test.txt`` (documents separated
by ``<|endoftext|>`` lines, see :mod:`keel.core.data.tokenizer`; a plain text file is one document).
``prepare_data`` builds the corpus when asked to, trains or reuses a byte-level BPE tokenizer on
the training split, and tokenizes each split once into ``tokens-<split>-<tokenizer hash>.npy``
beside the text. ``setup`` memory-maps those arrays, so workers share pages instead of copies.

Batches follow the Hugging Face convention for causal LMs: ``labels`` equals ``input_ids`` and the
model shifts them by one position internally (``transformers`` ``*ForCausalLM`` models do). A model
that does not shift must use ``input_ids[:, :-1]`` to predict ``labels[:, 1:]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from keel.core.data.corpora import build_english_corpus
from keel.core.data.sampling import ResumableDataLoader, resumable_loader
from keel.core.data.tokenizer import (
    EOT,
    check_text_file,
    default_tokenizer_path,
    file_record,
    file_unchanged,
    iter_document_pieces,
    load_or_train_tokenizer,
    tokenizer_fingerprint,
    write_text_atomic,
)
from keel.core.errors import ConfigError, DataError


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id: ``uint16`` below 65,536 tokens, else ``int32``."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.int32)


def tokenize_file(tokenizer: Tokenizer, path: str | os.PathLike[str], progress: bool = True) -> np.ndarray:
    """Tokenize a split file into one flat array of token ids.

    Every document is followed by the ``<|endoftext|>`` id so that a block spanning two documents
    shows the model where one ends. Long documents are encoded piecewise; decoding the ids still
    gives back the exact text because the tokenizer is byte-level.

    Args:
        tokenizer: A tokenizer holding the ``<|endoftext|>`` special token.
        path: The split file.
        progress: Show a progress bar (by bytes of text).

    Returns:
        The ids, with dtype :func:`token_dtype` of the tokenizer's vocabulary size.
    """
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise DataError(f"tokenizer has no {EOT} token; retrain it with keel.core.data.train_bpe_tokenizer")
    dtype = token_dtype(tokenizer.get_vocab_size())
    chunks: list[np.ndarray] = []
    batch: list[tuple[str, bool]] = []

    def flush() -> None:
        # encode_batch runs in parallel in Rust; batching keeps that busy without holding the file.
        encodings = tokenizer.encode_batch([piece for piece, _ in batch], add_special_tokens=False)
        for (_, ends), encoding in zip(batch, encodings, strict=True):
            chunks.append(np.asarray(encoding.ids + [eot] if ends else encoding.ids, dtype=dtype))
        batch.clear()

    columns = (TextColumn("tokenizing {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task(Path(path).name, total=Path(path).stat().st_size)
        pending = 0
        for piece, ends in iter_document_pieces(path):
            batch.append((piece, ends))
            pending += len(piece)
            if pending >= 1 << 22:
                flush()
                bar.update(task, advance=pending)
                pending = 0
        flush()
        bar.update(task, completed=Path(path).stat().st_size)
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)


def cached_tokens(tokenizer: Tokenizer, text_path: str | os.PathLike[str], progress: bool = True) -> Path:
    """Tokenize ``text_path`` once and cache the ids beside it; return the cache's path.

    The cache is named after the split and the tokenizer's fingerprint, so a new tokenizer gets a
    new cache. It is rebuilt when the text file changes. Files are written to a temporary name and
    renamed, so an interrupted run never leaves a truncated cache behind.

    Raises:
        DataError: The text file is missing, empty, binary or not UTF-8.
    """
    text = Path(text_path)
    stem = f"tokens-{text.stem}-{tokenizer_fingerprint(tokenizer)}"
    cache, meta_file = text.with_name(f"{stem}.npy"), text.with_name(f"{stem}.json")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if file_unchanged(text, meta["source"]) and np.load(cache, mmap_mode="r").shape == (meta["tokens"],):
            return cache
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no usable cache: build it
    check_text_file(text)
    ids = tokenize_file(tokenizer, text, progress=progress)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, ids)
    os.replace(tmp, cache)
    # The metadata goes last: a cache without matching metadata is never trusted.
    write_text_atomic(meta_file, json.dumps({"source": file_record(text), "tokens": int(ids.size)}) + "\n")
    return cache


class TokenBlockDataset(Dataset):
    """Fixed-length blocks cut from a memory-mapped ``.npy`` array of token ids.

    Block ``i`` covers tokens ``[i * stride, i * stride + block_size)``; with the default stride
    (``block_size``) blocks tile the stream without overlap and the tail shorter than a block is
    dropped. Each item is ``{"input_ids": LongTensor[block_size], "labels": LongTensor[block_size]}``
    with ``labels`` equal to ``input_ids`` (the model shifts them).

    Args:
        path: The ``.npy`` file of token ids.
        block_size: Tokens per block.
        stride: Distance between the starts of consecutive blocks (``block_size`` when ``None``).
        max_blocks: Keep only this many blocks, evenly spaced over the stream (for quick evaluation).
        source: The text file the ids came from; errors name it instead of the cache.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        block_size: int,
        stride: int | None = None,
        max_blocks: int | None = None,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.stride = stride or block_size
        self._tokens: np.ndarray | None = None
        n_tokens = len(self.tokens)
        if n_tokens < block_size:
            raise DataError(
                f"{source or self.path}: only {n_tokens} tokens, fewer than one block of {block_size}; "
                "lower block_size or add text"
            )
        count = (n_tokens - block_size) // self.stride + 1
        self.starts = np.arange(count, dtype=np.int64) * self.stride
        if max_blocks is not None and max_blocks < count:
            self.starts = self.starts[np.linspace(0, count - 1, max_blocks).round().astype(np.int64)]

    @property
    def tokens(self) -> np.ndarray:
        """The memory-mapped ids, opened on first use in each process."""
        if self._tokens is None:
            self._tokens = np.load(self.path, mmap_mode="r")
        return self._tokens

    def __getstate__(self) -> dict[str, Any]:
        # Workers started with spawn re-open the map instead of receiving a pickled copy of the data.
        return self.__dict__ | {"_tokens": None}

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        ids = torch.from_numpy(self.tokens[start : start + self.block_size].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


class TextDataModule(L.LightningDataModule):
    """Causal LM batches from a folder of text splits, with a tokenizer trained on its training split.

    Args:
        data_dir: Folder with ``train.txt`` and ``val.txt`` (``test.txt`` for ``trainer.test``).
        corpus: Source names for :func:`~keel.core.data.corpora.build_english_corpus`; when given,
            the corpus is built into ``data_dir`` unless it is already there.
        vocab_size: Upper bound on the BPE vocabulary; :attr:`vocab_size` is the trained size.
        block_size: Tokens per training example.
        batch_size: Examples per batch and process.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order and of the corpus split.
        stride: Distance between training blocks (``block_size``: no overlap). Evaluation blocks
            never overlap.
        max_eval_blocks: Cap on validation/test blocks, evenly spaced over the split.
        val_fraction: Share of documents for ``val.txt`` when building the corpus.
        test_fraction: Share of documents for ``test.txt`` when building the corpus.
        tokenizer_path: Where to keep the tokenizer (``<data_dir>/tokenizer-bpe-<vocab_size>.json``).
        min_frequency: Minimum count of a pair merged by BPE.
        progress: Show a progress bar while tokenizing.
    """

    def __init__(
        self,
        data_dir: str,
        corpus: list[str] | None = None,
        vocab_size: int = 4096,
        block_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        stride: int | None = None,
        max_eval_blocks: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        tokenizer_path: str | None = None,
        min_frequency: int = 2,
        progress: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("block_size", block_size), ("batch_size", batch_size), ("stride", stride or 1)):
            if value < 1:
                raise ConfigError(f"TextDataModule: {name}={value} must be at least 1")
        if num_workers < 0 or (max_eval_blocks is not None and max_eval_blocks < 1):
            raise ConfigError(f"TextDataModule: num_workers={num_workers} must be >= 0 and max_eval_blocks >= 1")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.corpus = list(corpus) if corpus else None
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self.stride, self.max_eval_blocks = stride, max_eval_blocks
        self.vocab_size_limit, self.min_frequency, self.progress = vocab_size, min_frequency, progress
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.tokenizer_path = (
            Path(tokenizer_path) if tokenizer_path else default_tokenizer_path(self.data_dir, vocab_size)
        )
        self.tokenizer: Tokenizer | None = None
        self.train_set: TokenBlockDataset | None = None
        self.val_set: TokenBlockDataset | None = None
        self.test_set: TokenBlockDataset | None = None

    # -- preparation ---------------------------------------------------------------------------

    def split_path(self, split: str) -> Path:
        """The text file of ``split`` (``train``, ``val`` or ``test``)."""
        return self.data_dir / f"{split}.txt"

    def _ensure_corpus(self) -> None:
        if self.corpus:
            build_english_corpus(self.data_dir, self.corpus, self.val_fraction, self.test_fraction, self.seed)
        elif not self.data_dir.is_dir():
            raise DataError(
                f"{self.data_dir}: no such folder; add train.txt and val.txt to it, or pass corpus=['pydoc_topics']"
            )
        elif not self.split_path("train").exists():
            raise DataError(
                f"{self.split_path('train')}: no such file; add train.txt and val.txt, or pass corpus=['pydoc_topics']"
            )

    def _ensure_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            self._ensure_corpus()
            self.tokenizer = load_or_train_tokenizer(
                self.split_path("train"), self.vocab_size_limit, self.tokenizer_path, self.min_frequency
            )
        return self.tokenizer

    def _cache(self, split: str) -> Path:
        return cached_tokens(self._ensure_tokenizer(), self.split_path(split), progress=self.progress)

    def prepare_data(self) -> None:
        """Build the corpus if asked to, train or load the tokenizer, and cache every split's ids.

        Lightning runs this on one process per node; everything it writes is reused when current.
        """
        self._ensure_tokenizer()
        for split in ("train", "val", "test"):
            if split != "test" or self.split_path(split).exists():
                self._cache(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and memory-map the splits the ``stage`` needs.

        Anything missing is prepared here (a no-op after :meth:`prepare_data`), so the module also
        works outside a Trainer.
        """
        if stage in (None, "fit"):
            self.train_set = self._blocks("train", self.stride, None)
        if stage in (None, "fit", "validate"):
            self.val_set = self._blocks("val", None, self.max_eval_blocks)
        if stage == "test" or (stage is None and self.split_path("test").exists()):
            self.test_set = self._blocks("test", None, self.max_eval_blocks)

    def _blocks(self, split: str, stride: int | None, max_blocks: int | None) -> TokenBlockDataset:
        return TokenBlockDataset(self._cache(split), self.block_size, stride, max_blocks, source=self.split_path(split))

    # -- properties ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the trained vocabulary (at most the requested ``vocab_size``); trains if needed."""
        return self._ensure_tokenizer().get_vocab_size()

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>``, which follows every document in the token stream."""
        eot = self._ensure_tokenizer().token_to_id(EOT)
        if eot is None:
            raise DataError(f"{self.tokenizer_path}: tokenizer has no {EOT} token; delete it to retrain")
        return eot

    # -- loaders -------------------------------------------------------------------------------

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def _dataset(self, split: str, stage: str) -> TokenBlockDataset:
        if getattr(self, f"{split}_set") is None:
            self.setup(stage)  # used outside a Trainer, or a loader asked for before its stage
        dataset: TokenBlockDataset = getattr(self, f"{split}_set")
        return dataset

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled training blocks; the loader's state dict lets Lightning resume mid-epoch exactly."""
        trainer = self.trainer
        return resumable_loader(
            self._dataset("train", "fit"),
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        """Validation blocks in order (all of them, or ``max_eval_blocks`` evenly spaced)."""
        return self._eval_loader(self._dataset("val", "validate"))

    def test_dataloader(self) -> DataLoader:
        """Test blocks in order.

        Raises:
            DataError: ``data_dir`` has no ``test.txt``.
        """
        return self._eval_loader(self._dataset("test", "test"))

    def _eval_loader(self, dataset: TokenBlockDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **self._loader_kwargs())
