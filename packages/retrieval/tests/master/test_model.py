"""MASTER's network: decoders see only the [CLS] bottleneck, losses read only the labelled positions."""

from __future__ import annotations

import functools
import random

import pytest
import torch
import torch.nn.functional as F

from keel.core.errors import ConfigError
from keel.retrieval.master import BottleneckedAutoencoder, MaskedLMGenerator, MasterModule
from keel.retrieval.master.data import PretrainingCollator
from keel.retrieval.master.masking import IGNORE, Corruption, KeywordWeights, TokenizedText
from keel.retrieval.master.model import check_tasks

VOCAB, MASK = 120, 3
THREE = ["keywords", "neighbour", "complementary"]


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False)


def module(tasks: list[str], generator=None) -> MasterModule:
    model = BottleneckedAutoencoder(tiny_bert(), tasks, decoder_layers=1)
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    return MasterModule(
        model, {"pretrain": 4, "finetune": 4}, optimizer, {"pretrain": 1e-3, "finetune": 1e-3},
        generator=generator, zero_shot_split=None,
    )  # fmt: skip


def batch_for(tasks: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    texts = []
    for words in (9, 14, 6):
        ids, groups = [1], []
        for _ in range(words):
            groups.append(list(range(len(ids), len(ids) + rng.choice([1, 2]))))
            ids += [rng.randrange(10, VOCAB) for _ in groups[-1]]
        texts.append(TokenizedText([*ids, 2], groups, [f"w{rng.randrange(5)}" for _ in groups]))
    corruption = Corruption(MASK, VOCAB, frozenset({0, 1, 2, MASK}))
    collate = PretrainingCollator(tasks, KeywordWeights({}, {}, 1), corruption, generator_probability=0.3)
    return collate([(i, t, None) for i, t in enumerate(texts)])


class CaptureEncoderStates:
    """Forward hook on the encoder: keeps every pass's last hidden states (with gradients), optionally noised."""

    def __init__(self, noise: float = 0.0) -> None:
        self.states: list[torch.Tensor] = []
        self.noise = noise

    def __call__(self, _module, _args, output):
        hidden = output.last_hidden_state
        if self.noise:
            generator = torch.Generator().manual_seed(len(self.states))
            bump = self.noise * torch.randn(hidden[:, 1:].shape, generator=generator)
            hidden = torch.cat([hidden[:, :1], hidden[:, 1:] + bump], dim=1)
            output["last_hidden_state"] = hidden
        if hidden.requires_grad:
            hidden.retain_grad()
        self.states.append(hidden)
        return output


def test_decoder_gradients_reach_only_the_cls_state() -> None:
    master = module(THREE)
    capture = CaptureEncoderStates()
    master.autoencoder.encoder.register_forward_hook(capture)
    terms = master.pretraining_losses(batch_for(THREE))
    passes = {"keywords": 0, "neighbour": 1, "complementary": 2}  # main, neighbour, complementary passes
    for task, index in passes.items():
        for state in capture.states:
            state.grad = None
        terms[task].backward(retain_graph=True)
        grad = capture.states[index].grad
        assert grad[:, 1:].abs().max() == 0, f"{task}: a decoder read encoder token states"
        assert grad[:, 0].abs().sum() > 0, f"{task}: the decoder ignores the bottleneck"
        others = [s.grad for i, s in enumerate(capture.states) if i != index]
        assert all(g is None or g.abs().max() == 0 for g in others), f"{task} read another pass's [CLS]"


def test_perturbing_encoder_token_states_changes_only_the_encoder_terms() -> None:
    master = module(THREE)
    master.eval()
    batch = batch_for(THREE)
    with torch.no_grad():
        clean = master.pretraining_losses(batch)
        handle = master.autoencoder.encoder.register_forward_hook(CaptureEncoderStates(noise=5.0))
        noisy = master.pretraining_losses(batch)
        handle.remove()
    for task in THREE:
        assert torch.equal(clean[task], noisy[task]), task
    for name in ("main_encoder_mlm", "neighbour_encoder_mlm", "complementary_encoder_mlm"):
        assert not torch.allclose(clean[name], noisy[name]), name
    assert set(clean) == {*THREE, "main_encoder_mlm", "neighbour_encoder_mlm", "complementary_encoder_mlm", "loss"}
    assert torch.allclose(clean["loss"], sum(v for k, v in clean.items() if k != "loss"))


@pytest.mark.parametrize(
    ("tasks", "terms"),
    [
        (["mlm"], {"main_encoder_mlm"}),
        (["neighbour"], {"main_encoder_mlm", "neighbour_encoder_mlm", "neighbour"}),
        (["complementary"], {"main_encoder_mlm", "complementary_encoder_mlm", "complementary"}),
    ],
)
def test_every_pretraining_includes_the_encoder_mlm_over_the_whole_passage(tasks, terms) -> None:
    """The authors' loss always adds the main pass's MLM (lm_out.loss), whatever the decoders."""
    assert check_tasks(tasks) == ["mlm", *[t for t in tasks if t != "mlm"]]
    assert check_tasks([]) == []
    master = module(tasks)
    assert set(master.autoencoder.decoders) == set(tasks) - {"mlm"}  # mlm is the encoder's, no decoder
    losses = master.pretraining_losses(batch_for(tasks))
    assert set(losses) == terms | {"loss"}
    assert torch.allclose(losses["loss"], sum(losses[t] for t in terms))


def test_mlm_loss_is_the_cross_entropy_at_the_labelled_positions_only() -> None:
    model = BottleneckedAutoencoder(tiny_bert(), ["keywords"], decoder_layers=1)
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, 32)
    labels = torch.full((2, 6), IGNORE)
    labels[0, 2], labels[1, 1], labels[1, 4] = 17, 40, 99
    logits = model.mlm_logits(hidden)
    expected = torch.stack(
        [F.cross_entropy(logits[r, c][None], labels[r, c][None]) for r, c in [(0, 2), (1, 1), (1, 4)]]
    )
    torch.testing.assert_close(model.mlm_loss(hidden, labels), expected.mean())
    moved = hidden.clone()
    moved[labels == IGNORE] += 10.0  # unlabelled positions do not count
    torch.testing.assert_close(model.mlm_loss(moved, labels), model.mlm_loss(hidden, labels))
    torch.testing.assert_close(  # the head's projection is the tied word-embedding matrix
        logits, model.mlm_transform(hidden) @ model.encoder.embeddings.word_embeddings.weight.T + model.mlm_bias
    )


def test_decoder_input_starts_with_the_bottleneck_instead_of_its_first_token() -> None:
    model = BottleneckedAutoencoder(tiny_bert(), ["keywords"], decoder_layers=1).eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    mask = torch.ones_like(ids)
    h = torch.randn(1, 32)
    same = model.decode("keywords", h, ids, mask)
    torch.testing.assert_close(model.decode("keywords", h, torch.tensor([[7, 20, 30, 40, 2]]), mask), same)
    assert not torch.allclose(model.decode("keywords", h + 1.0, ids, mask), same)


def test_as_biencoder_shares_the_encoder_and_pools_cls() -> None:
    model = BottleneckedAutoencoder(tiny_bert(), THREE)
    biencoder = model.as_biencoder()
    assert biencoder.query_encoder is model.encoder
    assert biencoder.shared
    ids = torch.tensor([[1, 20, 30, 2]])
    mask = torch.ones_like(ids)
    model.eval()
    torch.testing.assert_close(biencoder.encode(ids, mask), F.normalize(model.encode(ids, mask)[:, 0], dim=-1))
    assert model.decoders.keys() == set(THREE)
    assert BottleneckedAutoencoder(tiny_bert(), []).mlm_transform is None  # no pre-training, no head


class ConstantGenerator:
    """Proposes token 7 at every masked position."""

    vocab_size = VOCAB

    def __call__(self, input_ids, attention_mask, positions):
        return torch.where(positions, torch.full_like(input_ids, 7), input_ids)


def test_generator_tasks_label_the_generator_output(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = ["keywords", "corrupted", "replaced"]
    master = module(tasks, generator=ConstantGenerator())
    batch = batch_for(tasks)
    seen = {}
    original_mlm, original_replaced = master.autoencoder.mlm_loss, master.autoencoder.replaced_loss

    def replaced_spy(hidden, replaced, positions):
        seen["replaced"] = (replaced, positions)
        return original_replaced(hidden, replaced, positions)

    def mlm_spy(hidden, labels):
        seen.setdefault("labels", []).append(labels)
        return original_mlm(hidden, labels)

    monkeypatch.setattr(master.autoencoder, "mlm_loss", mlm_spy)
    monkeypatch.setattr(master.autoencoder, "replaced_loss", replaced_spy)
    terms = master.pretraining_losses(batch)
    assert {"corrupted", "replaced"} <= set(terms)
    positions, text = batch["generator_positions"], batch["text_ids"]
    corrupted_labels = seen["labels"][-1]  # main encoder, keywords, then corrupted
    assert torch.equal(corrupted_labels, torch.where(positions, text, IGNORE))
    replaced, judged = seen["replaced"]
    assert torch.equal(replaced, positions & (text != 7))
    assert torch.equal(judged, batch["word_positions"])


def test_masked_lm_generator_fills_only_the_masked_positions(tmp_path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertForMaskedLM(config).save_pretrained(tmp_path)
    generator = MaskedLMGenerator.from_pretrained(str(tmp_path))
    ids = torch.tensor([[1, 20, MASK, 40, MASK, 2]])
    positions = ids == MASK
    out = generator(ids, torch.ones_like(ids), positions)
    assert torch.equal(out[~positions], ids[~positions])
    assert ((out[positions] >= 0) & (out[positions] < VOCAB)).all()
    assert generator.vocab_size == VOCAB
    assert not any(p.requires_grad for p in generator.parameters())


def test_inconsistent_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="need a generator"):
        module(["keywords", "replaced"])
    with pytest.raises(ConfigError, match="need a generator"):
        module(["keywords"], generator=ConstantGenerator())
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ConfigError, match="tasks need pre-training steps"):
        MasterModule(BottleneckedAutoencoder(tiny_bert(), THREE), {"finetune": 3}, optimizer, {"finetune": 1e-3})
    with pytest.raises(ConfigError, match="no peak learning rate"):
        MasterModule(BottleneckedAutoencoder(tiny_bert(), THREE), {"pretrain": 3}, optimizer, {"finetune": 1e-3})
    with pytest.raises(ConfigError, match="decoder_layers"):
        BottleneckedAutoencoder(tiny_bert(), THREE, decoder_layers=0)


def test_mean_pairwise_cosine_by_hand() -> None:
    from keel.retrieval.master.model import mean_pairwise_cosine

    same = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0, abs=1e-6)
    rows = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    # pairs: (0, 1) 0, (0, 2) 1/sqrt(2), (1, 2) 1/sqrt(2)
    assert mean_pairwise_cosine(rows).item() == pytest.approx(2 / (3 * 2**0.5), rel=1e-6)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(rows[:1])
