"""Chang et al. (2020), *Pre-training Tasks for Embedding-based Large-scale Retrieval*: ICT, BFS, WLP.

- :mod:`~keel.retrieval.ict_bfs_wlp.tasks`: the inverse cloze task, body first selection and wiki
  link prediction as pair builders over keel's man-page corpus (``SEE ALSO`` links as hyperlinks),
  their weighted mixture, and a fixed fraction of the labelled queries for fine-tuning.
- :mod:`~keel.retrieval.ict_bfs_wlp.data`: one DataModule that gives pre-training batches, then
  fine-tuning batches.
- :mod:`~keel.retrieval.ict_bfs_wlp.module`: :class:`PretrainThenFinetune`, the bi-encoder module
  run through both stages with a learning rate per stage.
"""

from keel.retrieval.ict_bfs_wlp.data import PretrainFinetuneDataModule, stage_plan
from keel.retrieval.ict_bfs_wlp.module import PretrainThenFinetune
from keel.retrieval.ict_bfs_wlp.tasks import (
    BodyFirstSelection,
    InverseCloze,
    LabelledFraction,
    PageGraph,
    TaskMixture,
    WikiLinkPrediction,
    is_query_sentence,
    mixture_counts,
    split_sentences,
)

__all__ = [
    "BodyFirstSelection",
    "InverseCloze",
    "LabelledFraction",
    "PageGraph",
    "PretrainFinetuneDataModule",
    "PretrainThenFinetune",
    "TaskMixture",
    "WikiLinkPrediction",
    "is_query_sentence",
    "mixture_counts",
    "split_sentences",
    "stage_plan",
]
