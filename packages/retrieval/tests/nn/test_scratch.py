"""A randomly initialised bi-encoder takes the template's architecture and tokenizer, never its weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.core.errors import ConfigError
from keel.retrieval.nn import biencoder_from_pretrained, biencoder_from_scratch


def test_scratch_has_the_architecture_not_the_weights(tiny_model_dir: Path) -> None:
    trained = biencoder_from_pretrained(str(tiny_model_dir))
    torch.manual_seed(1)
    fresh = biencoder_from_scratch(str(tiny_model_dir), shared=False, num_hidden_layers=1)
    assert fresh.query_encoder.config.num_hidden_layers == 1
    assert fresh.query_encoder.config.hidden_size == trained.query_encoder.config.hidden_size
    assert fresh.tokenizer_json == trained.tokenizer_json
    weight = "embeddings.word_embeddings.weight"
    query, passage = fresh.query_encoder.state_dict()[weight], fresh.passage_encoder.state_dict()[weight]
    assert not torch.equal(query, trained.query_encoder.state_dict()[weight])
    assert not torch.equal(query, passage), "separate towers start independently"
    with pytest.raises(ConfigError, match="no field"):
        biencoder_from_scratch(str(tiny_model_dir), num_layers=2)
