"""Knowledge distillation: MiniLM, a hidden-state baseline, and a retrieval task to score students on.

MiniLM deep self-attention distillation and the hidden-state MSE baseline, the distil-then-fine-tune
run of the MiniLM experiment, and its WordNet definition -> headword retrieval task.
"""

from keel.core.distill.data import (
    DefinitionPair,
    DefinitionSplit,
    WordPieceTextDataModule,
    definition_pairs,
    distillation_sentences,
    split_by_headword,
    teacher_tokenizer,
)
from keel.core.distill.minilm import (
    QKV,
    MiniLMLosses,
    capture_last_layer_qkv,
    minilm_losses,
    num_heads,
    relation_kl,
    relation_log_probs,
)
from keel.core.distill.module import (
    DistillationModule,
    distillation_losses,
    pretrained,
    resolve_model_path,
    student_from,
)
from keel.core.distill.pipeline import (
    DistillRetrievalDataModule,
    DistillThenRetrieve,
    StagedLoader,
    clear_optimizer_state,
)
from keel.core.distill.retrieval import (
    DefinitionRetrievalDataModule,
    RetrievalEvaluator,
    embed,
    info_nce,
    mean_pool,
    retrieval_metrics,
)

__all__ = [
    "QKV",
    "DefinitionPair",
    "DefinitionRetrievalDataModule",
    "DefinitionSplit",
    "DistillRetrievalDataModule",
    "DistillThenRetrieve",
    "DistillationModule",
    "MiniLMLosses",
    "RetrievalEvaluator",
    "StagedLoader",
    "WordPieceTextDataModule",
    "capture_last_layer_qkv",
    "clear_optimizer_state",
    "definition_pairs",
    "distillation_losses",
    "distillation_sentences",
    "embed",
    "info_nce",
    "mean_pool",
    "minilm_losses",
    "num_heads",
    "pretrained",
    "relation_kl",
    "relation_log_probs",
    "resolve_model_path",
    "retrieval_metrics",
    "split_by_headword",
    "student_from",
    "teacher_tokenizer",
]
