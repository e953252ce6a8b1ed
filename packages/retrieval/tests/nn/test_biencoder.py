"""The bi-encoder network: pooling by hand, towers, temperature, and rebuilding from its spec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from keel.core.errors import CheckpointError, ConfigError
from keel.retrieval.nn import BiEncoder, biencoder_from_pretrained, pool


def tiny_bert(seed: int) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertModel(config).eval()


IDS = torch.tensor([[2, 5, 7, 3], [2, 9, 3, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def test_mean_and_cls_pooling_by_hand() -> None:
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ConfigError, match="pooling"):
        pool(hidden, mask, "max")


def test_embeddings_are_the_pooled_states_normalised() -> None:
    encoder = tiny_bert(0)
    hidden = encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state
    expected = hidden[1, :3].mean(0)
    raw = BiEncoder(encoder, normalize=False).encode_queries(IDS, MASK)
    torch.testing.assert_close(raw[1], expected)
    unit = BiEncoder(encoder).encode_queries(IDS, MASK)
    torch.testing.assert_close(unit[1], expected / expected.norm())


def test_shared_and_separate_towers() -> None:
    shared = BiEncoder(tiny_bert(0))
    torch.testing.assert_close(shared.encode_queries(IDS, MASK), shared.encode_passages(IDS, MASK))
    separate = BiEncoder(tiny_bert(0), tiny_bert(1))
    assert not separate.shared
    assert not torch.allclose(separate.encode_queries(IDS, MASK), separate.encode_passages(IDS, MASK))


def test_fixed_and_learned_temperature() -> None:
    fixed = BiEncoder(tiny_bert(0), temperature=0.05)
    assert fixed.temperature.item() == pytest.approx(0.05)
    assert "log_temperature" not in dict(fixed.named_parameters())
    learned = BiEncoder(tiny_bert(0), temperature=0.05, learn_temperature=True, min_temperature=0.02)
    assert dict(learned.named_parameters())["log_temperature"].item() == pytest.approx(math.log(0.05))
    with torch.no_grad():
        learned.log_temperature.fill_(math.log(0.001))
    assert learned.temperature.item() == pytest.approx(0.02), "a learned temperature is clamped at its floor"
    scores = fixed.score(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(scores, torch.tensor([[10.0, 20.0]]))
    with pytest.raises(ConfigError, match="temperature"):
        BiEncoder(tiny_bert(0), temperature=0.0)


def test_spec_rebuilds_the_same_architecture() -> None:
    model = BiEncoder(tiny_bert(0), tiny_bert(1), pooling="cls", normalize=False, temperature=0.1,
                      learn_temperature=True, tokenizer_json="{}")  # fmt: skip
    rebuilt = BiEncoder.from_spec(model.spec())
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt.encode_passages(IDS, MASK), model.encode_passages(IDS, MASK))
    assert (rebuilt.pooling, rebuilt.normalize, rebuilt.tokenizer_json) == ("cls", False, "{}")


def test_from_pretrained_reads_a_local_folder(tiny_model_dir: Path) -> None:
    model = biencoder_from_pretrained(str(tiny_model_dir), shared=False)
    assert not model.shared
    assert model.tokenizer_json is not None
    torch.testing.assert_close(model.encode_queries(IDS, MASK), model.encode_passages(IDS, MASK))  # same start
    with pytest.raises(CheckpointError, match="config.json"):
        biencoder_from_pretrained(str(tiny_model_dir / "missing"))


def test_every_parameter_gets_a_gradient() -> None:
    """An unused parameter (BERT's pooler head) would stall data-parallel gradient reduction."""
    model = BiEncoder(tiny_bert(0), tiny_bert(1), learn_temperature=True)
    loss = model.score(model.encode_queries(IDS, MASK), model.encode_passages(IDS, MASK)).logsumexp(1).sum()
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
