"""LEAD's terms by hand on tiny tensors, the layer draws, and the module: a frozen teacher, a trained student."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.data import RetrievalDataModule
from keel.retrieval.lead import (
    LEADModule,
    layer_distillation,
    layer_embeddings,
    layer_weights,
    masked_scores,
    sample_layers,
    score_kl,
    truncated_biencoder,
)
from keel.retrieval.nn import biencoder_from_pretrained

NO_MASK = torch.zeros(2, 3, dtype=torch.bool)


def kl_by_hand(p_logits: list[float], q_logits: list[float]) -> float:
    p = [math.exp(x) / sum(math.exp(y) for y in p_logits) for x in p_logits]
    q = [math.exp(x) / sum(math.exp(y) for y in q_logits) for x in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_score_kl_by_hand() -> None:
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    student = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    expected = (kl_by_hand([2.0, 0.0, -1.0], [1.0, 1.0, 0.0]) + kl_by_hand([0.5, 0.5, 1.0], [0.0, 2.0, 0.0])) / 2
    assert score_kl(teacher, student, NO_MASK).item() == pytest.approx(expected, rel=1e-6)
    assert score_kl(teacher, teacher, NO_MASK).item() == pytest.approx(0.0, abs=1e-7)
    # T divides the teacher's scores only, as the official code does
    halved = (kl_by_hand([1.0, 0.0, -0.5], [1.0, 1.0, 0.0]) + kl_by_hand([0.25, 0.25, 0.5], [0.0, 2.0, 0.0])) / 2
    assert score_kl(teacher, student, NO_MASK, temperature=2.0).item() == pytest.approx(halved, rel=1e-6)


def test_masked_cells_leave_the_kl_with_finite_gradients() -> None:
    mask = torch.tensor([[False, True, False], [False, False, False]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], requires_grad=True)
    teacher_candidates = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    teacher = masked_scores(queries, teacher_candidates, 1.0, mask)
    student = masked_scores(queries, candidates, 0.5, mask)
    assert student[0, 1] == float("-inf")
    loss = score_kl(teacher, student, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(candidates.grad).all()
    # the target side too: a jointly trained teacher (and the reverse KL's student) get its gradient
    assert torch.isfinite(teacher_candidates.grad).all()
    assert teacher_candidates.grad.abs().sum() > 0
    # row 0 without its masked column is an ordinary 2-way KL
    row0 = kl_by_hand([0.5, 0.0], [2.0, 0.0])
    row1 = kl_by_hand([0.5, 0.0, 1.0], [0.0, 0.2, 2.0])
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_layer_weights_follow_the_teacher_layers_losses_without_gradient() -> None:
    labels = torch.tensor([0, 2])
    good = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]], requires_grad=True)
    bad = torch.tensor([[0.0, 4.0, 0.0], [4.0, 0.0, 0.0]], requires_grad=True)
    weights = layer_weights([good, bad], labels, layer_temperature=10.0)
    nll = [F.cross_entropy(good, labels).item(), F.cross_entropy(bad, labels).item()]
    by_hand = [math.exp(-x / 10) / sum(math.exp(-y / 10) for y in nll) for x in nll]
    assert weights.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert weights[0] > weights[1], "the better-retrieving teacher layer weighs more"
    assert not weights.requires_grad


def test_layer_distillation_is_the_weighted_sum_of_aligned_kls() -> None:
    labels = torch.tensor([0, 2])
    teacher = [torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])]
    student = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])]
    out = layer_distillation(teacher, student, labels, NO_MASK, 1.0, 10.0)
    kls = [score_kl(t, s, NO_MASK) for t, s in zip(teacher, student, strict=True)]
    weights = layer_weights(teacher, labels, 10.0)
    assert out.loss.item() == pytest.approx(sum(w * k for w, k in zip(weights, kls, strict=True)).item())
    uniform = layer_distillation(teacher, student, labels, NO_MASK, weighting="uniform")
    assert uniform.loss.item() == pytest.approx((kls[0] + kls[1]).item() / 2)
    assert layer_distillation([], [], labels, NO_MASK).loss.item() == 0.0


def test_layers_are_sorted_and_redrawn_every_block() -> None:
    draws = [sample_layers(4, 12, 3, seed=7, block=b) for b in range(20)]
    for student, teacher in draws:
        assert student == sorted(student)
        assert teacher == sorted(teacher)
        assert len(set(student)) == len(set(teacher)) == 3
        assert set(student) <= set(range(1, 5))
        assert set(teacher) <= set(range(1, 13))
    assert len({tuple(t) for _, t in draws}) > 5, "a new block draws new layers"
    assert draws[3] == sample_layers(4, 12, 3, seed=7, block=3), "a draw depends on (seed, block) only"
    assert sample_layers(2, 6, 2, seed=0, block=0)[0] == [1, 2]
    with pytest.raises(ConfigError):
        sample_layers(2, 6, 3, seed=0, block=0)


def test_truncated_student_starts_as_the_teachers_lower_layers(tiny_model_dir: Path) -> None:
    teacher = biencoder_from_pretrained(str(tiny_model_dir)).eval()
    student = truncated_biencoder(str(tiny_model_dir), num_layers=1).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2088, 102, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        by_layer = layer_embeddings(teacher, ids, mask)
        torch.testing.assert_close(by_layer[-1], teacher.encode(ids, mask))
        torch.testing.assert_close(student.encode(ids, mask), by_layer[1])
    assert student.query_encoder.config.num_hidden_layers == 1


def _modules(model_dir: Path, **kwargs: object) -> tuple[LEADModule, BiEncoderModule]:
    torch.manual_seed(0)
    student = truncated_biencoder(str(model_dir), num_layers=1)
    teacher = biencoder_from_pretrained(str(model_dir))
    kwargs.setdefault("layers", 1)
    lead = LEADModule(student, functools.partial(torch.optim.AdamW, lr=1e-3), teacher, **kwargs)
    alone = BiEncoderModule(student, functools.partial(torch.optim.AdamW, lr=1e-3))
    return lead, alone


def _batch(model_dir: Path, beir: Path) -> dict[str, torch.Tensor]:
    data = RetrievalDataModule(str(beir), str(model_dir), negatives=1, batch_size=4)
    data.setup()
    return next(iter(data.train_dataloader()))


def _scores_by_hand(
    module: LEADModule, batch: dict[str, torch.Tensor], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's final scores, and the (teacher, student) scores of the current layer pair (K=1)."""
    (s_layer,), (t_layer,) = module.current_layers()
    queries = (batch["query_input_ids"], batch["query_attention_mask"])
    passages = (batch["passage_input_ids"], batch["passage_attention_mask"], "passage")
    q, p = layer_embeddings(module.teacher, *queries), layer_embeddings(module.teacher, *passages)
    sq, sp = layer_embeddings(module.model, *queries), layer_embeddings(module.model, *passages)
    t, t_student = module.teacher.temperature, module.model.temperature
    teacher_final = masked_scores(q[-1], p[-1], t, mask)
    return (
        teacher_final,
        masked_scores(q[t_layer], p[t_layer], t, mask),
        masked_scores(sq[s_layer], sp[s_layer], t_student, mask),
    )


def test_teacher_gets_no_gradient_and_stays_out_of_optimizer_and_checkpoint(
    tiny_model_dir: Path, tiny_beir: Path
) -> None:
    module, _ = _modules(tiny_model_dir)
    module.train()
    assert not module.teacher.training, "the teacher never drops out"
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    loss = module.forward_loss(_batch(tiny_model_dir, tiny_beir)).loss
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
    optimizer = module.configure_optimizers()
    optimizer.step()
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in module.teacher.parameters()}
    for key, value in module.teacher.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not any(key.startswith("teacher.") for key in module.state_dict())


def test_loss_adds_the_distillation_terms_to_the_students_own(tiny_model_dir: Path, tiny_beir: Path) -> None:
    batch = _batch(tiny_model_dir, tiny_beir)
    only_student, alone = _modules(tiny_model_dir, loss_weights={"final": 0.0, "layers": 0.0})
    only_student.train()
    alone.train()
    torch.testing.assert_close(only_student.forward_loss(batch).loss, alone.forward_loss(batch).loss)
    full, _ = _modules(tiny_model_dir, distill_temperature=2.0)
    full.train()
    with torch.no_grad():
        student = alone.forward_loss(batch)
        total = full.forward_loss(batch).loss
        # by hand: K=1 pairs student layer 1 with one of the teacher's 2 layers; the teacher's final
        # layer is its layer 2
        (s_layers,), _ = full.current_layers()
        mask = student.false_negatives
        teacher_final, teacher_layer, student_layer = _scores_by_hand(full, batch, mask)
        final = score_kl(teacher_final, student.logits, mask, 2.0)
        layer_kl = score_kl(teacher_layer, student_layer, mask, 2.0)
    assert s_layers == 1
    assert total.item() == pytest.approx((student.loss + final + layer_kl).item(), rel=1e-5)  # one pair: weight 1
    full.eval()  # validation and test score the student alone
    torch.testing.assert_close(full.forward_loss(batch).loss, student.loss)


def test_two_layer_pairs_are_weighted_by_the_teacher_layers_losses(tiny_model_dir: Path, tiny_beir: Path) -> None:
    """K=2: both student layers learn from both teacher layers, weighted softmax(-NLL / tau)."""
    batch = _batch(tiny_model_dir, tiny_beir)
    torch.manual_seed(0)
    student = truncated_biencoder(str(tiny_model_dir), num_layers=2)
    teacher = biencoder_from_pretrained(str(tiny_model_dir))
    with torch.no_grad():  # the tiny teacher has 2 layers: move the student away from being its copy
        for param in student.parameters():
            param.add_(0.2 * torch.randn_like(param))
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    lead = LEADModule(student, optimizer, teacher, layers=2, layer_temperature=0.01)
    alone = BiEncoderModule(student, optimizer)
    lead.train()
    alone.train()
    with torch.no_grad():
        own = alone.forward_loss(batch)
        total = lead.forward_loss(batch).loss
        assert lead.current_layers() == ([1, 2], [1, 2])  # every layer of both 2-layer models, in order
        mask, labels = own.false_negatives, own.labels
        queries = (batch["query_input_ids"], batch["query_attention_mask"])
        passages = (batch["passage_input_ids"], batch["passage_attention_mask"], "passage")
        tq, tp = layer_embeddings(teacher, *queries), layer_embeddings(teacher, *passages)
        sq, sp = layer_embeddings(student, *queries), layer_embeddings(student, *passages)
        t_scores = [masked_scores(tq[a], tp[a], teacher.temperature, mask) for a in (1, 2)]
        s_scores = [masked_scores(sq[b], sp[b], student.temperature, mask) for b in (1, 2)]
        nll = torch.stack([F.cross_entropy(s, labels) for s in t_scores])
        weights = torch.softmax(-nll / 0.01, dim=0)
        kls = [score_kl(t, s, mask) for t, s in zip(t_scores, s_scores, strict=True)]
        layered = weights[0] * kls[0] + weights[1] * kls[1]
        final = score_kl(t_scores[-1], own.logits, mask)
    # neither the weights nor the two pairs' KLs are equal, so a uniform weighting would show
    assert abs(weights[0] - weights[1]) > 0.05
    assert abs(kls[0] - kls[1]) > 0.01 * abs(kls[0])
    assert total.item() == pytest.approx((own.loss + final + layered).item(), rel=1e-5)


def test_module_checks_its_settings(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="K=2"):
        _modules(tiny_model_dir, layers=2)
    with pytest.raises(ConfigError, match="loss_weights"):
        _modules(tiny_model_dir, loss_weights={"attention": 1.0})


def test_a_jointly_trained_teacher_adds_its_own_loss_and_the_reverse_kl(tiny_model_dir: Path, tiny_beir: Path) -> None:
    batch = _batch(tiny_model_dir, tiny_beir)
    joint, alone = _modules(tiny_model_dir, train_teacher=True, distill_temperature=2.0)
    joint.train()
    assert joint.teacher.training, "a trained teacher follows the module's mode"
    total = joint.forward_loss(batch).loss
    with torch.no_grad():
        student = alone.forward_loss(batch)
        mask = student.false_negatives
        teacher_final, teacher_layer, student_layer = _scores_by_hand(joint, batch, mask)
        teacher_own = F.cross_entropy(teacher_final, student.labels)
        forward = score_kl(teacher_final, student.logits, mask, 2.0)
        reverse = score_kl(student.logits, teacher_final, mask, 2.0)  # KL(softmax(s^S / T) || softmax(s^T))
        layer_kl = score_kl(teacher_layer, student_layer, mask, 2.0)
    expected = student.loss + teacher_own + forward + reverse + layer_kl
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert reverse.item() != pytest.approx(forward.item(), rel=1e-3), "the two directions differ on this batch"
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.teacher.parameters())
    optimizer = joint.configure_optimizers()
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in joint.teacher.parameters()} <= trained
    assert any(key.startswith("teacher.") for key in joint.state_dict()), "resuming needs the trained teacher"
    with pytest.raises(ConfigError, match="train_teacher needs a teacher"):
        LEADModule(joint.model, functools.partial(torch.optim.AdamW, lr=1e-3), None, train_teacher=True)
