"""MiniLM deep self-attention distillation (Wang et al., 2020, "MiniLM", Sections 3.1-3.2).

The student mimics two distributions of the teacher's **last** Transformer layer, per attention head:

* attention distributions (Eq. 3):  A = softmax(Q K^T / sqrt(d_k)),  loss L_AT = mean KL(A_teacher || A_student)
* value relations (Eq. 4):          VR = softmax(V V^T / sqrt(d_k)), loss L_VR = mean KL(VR_teacher || VR_student)

and the total loss is L_AT + L_VR (Eq. 5). Each KL is summed over the keys and averaged over heads
and over the (non-padding) query positions, as in the paper's 1 / (A_h |x|) normalisation. Both
relations are |x| x |x| matrices, so the student's hidden size may differ from the teacher's; the
number of heads must match (the paper's setting), unless ``relation_heads`` is given: then the
concatenated queries, keys and values of both models are re-split into that many relation heads
before the relations are formed, which is the generalisation MiniLMv2 introduced (Wang et al., 2021,
Section 3.1) and lets students have any head count. That option is our choice for mismatched heads.

Queries, keys and values are captured with forward hooks on the projection layers of the last
layer, so any Hugging Face encoder or decoder of a supported family works unchanged:
BERT-style (``attention.self.query/key/value``), GPT-2 (fused ``attn.c_attn``), and models with
``q_proj/k_proj/v_proj`` (LLaMA, OPT, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from keel.core.errors import ConfigError


@dataclass
class QKV:
    """The last layer's projected queries, keys and values, each ``[batch, length, heads * head_dim]``."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


def _last_layer_projections(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """Find the query/key/value projection modules of the last attention layer.

    Returns:
        ``("separate", [q, k, v])`` or ``("fused", [c_attn])``.

    Raises:
        ConfigError: If the model family is not recognised.
    """
    names = dict(model.named_modules())
    bert = sorted(n for n in names if n.endswith("attention.self.query"))
    if bert:
        prefix = bert[-1][: -len("query")]
        layers = [names[prefix + part] for part in ("query", "key", "value")]
        return "separate", layers
    proj = sorted((n for n in names if n.endswith("q_proj")), key=_layer_order)
    if proj:
        prefix = proj[-1][: -len("q_proj")]
        return "separate", [names[prefix + part] for part in ("q_proj", "k_proj", "v_proj")]
    fused = sorted((n for n in names if n.endswith("attn.c_attn")), key=_layer_order)
    if fused:
        return "fused", [names[fused[-1]]]
    raise ConfigError(
        f"{type(model).__name__}: cannot find the attention projections of its last layer "
        "(supported: BERT-style query/key/value, q_proj/k_proj/v_proj, GPT-2 c_attn)"
    )


def _layer_order(name: str) -> tuple[int, ...]:
    # "h.10.attn.c_attn" must sort after "h.9.attn.c_attn"
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def num_heads(model: nn.Module) -> int:
    """The attention head count from a Hugging Face model's config."""
    config = getattr(model, "config", None)
    for attr in ("num_attention_heads", "n_head", "num_heads"):
        if config is not None and hasattr(config, attr):
            return int(getattr(config, attr))
    raise ConfigError(f"{type(model).__name__}: its config names no attention head count")


@contextmanager
def capture_last_layer_qkv(model: nn.Module) -> Iterator[list[QKV]]:
    """Record the last layer's queries, keys and values during forward passes inside the block.

    Yields:
        A list that receives one :class:`QKV` per forward pass.
    """
    kind, modules = _last_layer_projections(model)
    captured: list[QKV] = []
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    if kind == "fused":

        def fused_hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            query, key, value = output.chunk(3, dim=-1)
            captured.append(QKV(query, key, value))

        handles.append(modules[0].register_forward_hook(fused_hook))
    else:

        def make_hook(index: int):  # type: ignore[no-untyped-def]
            def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
                outputs[index] = output
                if len(outputs) == 3:
                    captured.append(QKV(outputs[0], outputs[1], outputs[2]))
                    outputs.clear()

            return hook

        handles.extend(module.register_forward_hook(make_hook(i)) for i, module in enumerate(modules))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[batch, length, heads * d]`` to ``[batch, heads, length, d]``."""
    batch, length, width = x.shape
    if width % heads:
        raise ConfigError(f"a width of {width} cannot be split into {heads} heads")
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def relation_log_probs(
    left: torch.Tensor, right: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Log of softmax(left_h right_h^T / sqrt(d)) per head: ``[batch, heads, length, length]``.

    Args:
        left: Queries (or values), ``[batch, length, heads * d]``.
        right: Keys (or values), same shape.
        heads: Heads to split into.
        key_mask: ``[batch, length]``, true at real tokens; padding keys get probability 0.
    """
    left_h, right_h = split_heads(left, heads), split_heads(right, heads)
    scores = left_h @ right_h.transpose(-1, -2) / math.sqrt(left_h.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return torch.log_softmax(scores.float(), dim=-1)


def relation_kl(
    teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, query_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher || student) summed over keys, averaged over heads and real query positions."""
    teacher_probs = teacher_log_probs.exp()
    # padding keys have probability 0 in both: their terms are 0, not 0 * (-inf + inf)
    terms = torch.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
    per_query = terms.sum(-1).mean(1)  # [batch, length]: sum over keys, mean over heads
    if query_mask is None:
        return per_query.mean()
    mask = query_mask.to(per_query.dtype)
    return (per_query * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class MiniLMLosses:
    """The two MiniLM terms and their sum."""

    attention: torch.Tensor
    value_relation: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """L_AT + L_VR (MiniLM Eq. 5)."""
        return self.attention + self.value_relation


def minilm_losses(
    teacher: QKV,
    student: QKV,
    teacher_heads: int,
    student_heads: int,
    attention_mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> MiniLMLosses:
    """The MiniLM attention-distribution and value-relation losses for one batch.

    Args:
        teacher: The teacher's last-layer projections (no gradient needed).
        student: The student's last-layer projections.
        teacher_heads: The teacher's attention heads.
        student_heads: The student's attention heads.
        attention_mask: ``[batch, length]``, 1 at real tokens.
        relation_heads: Re-split both models into this many relation heads (needed when the head
            counts differ; see the module docstring).

    Raises:
        ConfigError: If the head counts differ and no ``relation_heads`` is given.
    """
    if relation_heads is None:
        if teacher_heads != student_heads:
            raise ConfigError(
                f"teacher has {teacher_heads} attention heads and student {student_heads}; MiniLM transfers "
                "per-head relations, so set relation_heads (MiniLMv2-style re-split) or match the head counts"
            )
        t_heads = s_heads = teacher_heads
    else:
        t_heads = s_heads = relation_heads
    mask = attention_mask.bool() if attention_mask is not None else None
    attention = relation_kl(
        relation_log_probs(teacher.query, teacher.key, t_heads, mask),
        relation_log_probs(student.query, student.key, s_heads, mask),
        mask,
    )
    value = relation_kl(
        relation_log_probs(teacher.value, teacher.value, t_heads, mask),
        relation_log_probs(student.value, student.value, s_heads, mask),
        mask,
    )
    return MiniLMLosses(attention, value)
