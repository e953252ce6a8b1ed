"""CAPSTONE (He et al., 2023): curriculum sampling for dense retrieval with document expansion.

A dual encoder reads each passage expanded with one pseudo query. In training the pseudo query is
drawn by a curriculum, from the candidates least similar (ROUGE-L) to the real query to the most
similar, never the real query itself; at inference each passage is scored through several
expansions and the best view counts.

- :mod:`~keel.retrieval.capstone.rouge`: ROUGE-L (longest common subsequence F-measure).
- :mod:`~keel.retrieval.capstone.expansion`: the expander interface, the offline
  :class:`PassageQueries` and a local seq2seq generator (:class:`Seq2SeqQueries`).
- :mod:`~keel.retrieval.capstone.curriculum`: ranking, parts and the schedule.
- :mod:`~keel.retrieval.capstone.data`: :class:`CapstoneDataModule` and its collator.
- :mod:`~keel.retrieval.capstone.multiview`: multi-view scoring of a corpus or a judged pool.
- :mod:`~keel.retrieval.capstone.module`: :class:`CapstoneModule`.
"""

from keel.retrieval.capstone.curriculum import (
    CURRICULA,
    curriculum_part,
    curriculum_views,
    part_members,
    rank_by_similarity,
)
from keel.retrieval.capstone.data import CapstoneDataModule, ExpansionCollator, join_expansion
from keel.retrieval.capstone.expansion import PassageQueries, QueryExpander, Seq2SeqQueries
from keel.retrieval.capstone.module import CapstoneModule
from keel.retrieval.capstone.multiview import (
    AGGREGATIONS,
    max_over_views,
    mean_view_vectors,
    multi_view_pool_ranking,
    multi_view_run,
)
from keel.retrieval.capstone.rouge import lcs_length, rouge_l

__all__ = [
    "AGGREGATIONS",
    "CURRICULA",
    "CapstoneDataModule",
    "CapstoneModule",
    "ExpansionCollator",
    "PassageQueries",
    "QueryExpander",
    "Seq2SeqQueries",
    "curriculum_part",
    "curriculum_views",
    "join_expansion",
    "lcs_length",
    "max_over_views",
    "mean_view_vectors",
    "multi_view_pool_ranking",
    "multi_view_run",
    "part_members",
    "rank_by_similarity",
    "rouge_l",
]
