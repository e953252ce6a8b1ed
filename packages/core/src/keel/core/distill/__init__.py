"""Knowledge distillation: MiniLM deep self-attention distillation and a hidden-state baseline."""

from keel.core.distill.minilm import (
    QKV,
    MiniLMLosses,
    capture_last_layer_qkv,
    minilm_losses,
    num_heads,
    relation_kl,
    relation_log_probs,
)
from keel.core.distill.module import DistillationModule, pretrained, resolve_model_path, student_from

__all__ = [
    "QKV",
    "DistillationModule",
    "MiniLMLosses",
    "capture_last_layer_qkv",
    "minilm_losses",
    "num_heads",
    "pretrained",
    "relation_kl",
    "relation_log_probs",
    "resolve_model_path",
    "student_from",
]
