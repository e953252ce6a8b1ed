"""Retrieval data: BEIR folders, training pairs, the DataModule, and builders of offline corpora.

Builders (each writes a BEIR folder with fixed train/dev/test splits and prints a ``data:`` line):

==============  ====================================  ==========================================
builder         install                               task
==============  ====================================  ==========================================
wordnet         ``apt-get install wordnet-base``      definition -> headword
gcide           ``apt-get install dict-gcide``        definition -> headword (Webster 1913)
pydoc           ``apt-get install python3.11-doc``    API summary / FAQ question -> passage
manpages        ``apt-get install manpages            man page summary -> DESCRIPTION, plus
                manpages-dev``                        SEE ALSO links between pages
==============  ====================================  ==========================================
"""

from keel.retrieval.data.beir import (
    MANIFEST,
    QRELS_HEADER,
    SPLITS,
    BeirData,
    PairBuilder,
    Passage,
    Qrels,
    QrelsPairs,
    Query,
    TrainingPair,
    add_hard_negatives,
    group_pairs,
    pairs_from_qrels,
    read_beir,
    read_corpus,
    read_qrels,
    read_queries,
    read_training_pairs,
    write_beir,
    write_training_pairs,
)
from keel.retrieval.data.build import (
    CORPORA,
    assign_split,
    build_corpus,
    chunk_paragraphs,
    ensure_corpus,
    read_pages,
    write_page_graph,
)
from keel.retrieval.data.datamodule import GroupCollator, GroupDataset, RetrievalDataModule, text_table
from keel.retrieval.data.definitions import build_definitions, gcide_definition_pairs, webster_senses
from keel.retrieval.data.manpages import build_manpages
from keel.retrieval.data.pydoc import build_pydoc, parse_page
from keel.retrieval.data.troff import parse_man
from keel.retrieval.data.wordpiece import domain_wordpiece, train_wordpiece

__all__ = [
    "CORPORA",
    "MANIFEST",
    "QRELS_HEADER",
    "SPLITS",
    "BeirData",
    "GroupCollator",
    "GroupDataset",
    "PairBuilder",
    "Passage",
    "Qrels",
    "QrelsPairs",
    "Query",
    "RetrievalDataModule",
    "TrainingPair",
    "add_hard_negatives",
    "assign_split",
    "build_corpus",
    "build_definitions",
    "build_manpages",
    "build_pydoc",
    "domain_wordpiece",
    "ensure_corpus",
    "chunk_paragraphs",
    "gcide_definition_pairs",
    "group_pairs",
    "pairs_from_qrels",
    "parse_man",
    "parse_page",
    "read_beir",
    "read_corpus",
    "read_pages",
    "read_qrels",
    "read_queries",
    "read_training_pairs",
    "text_table",
    "train_wordpiece",
    "webster_senses",
    "write_beir",
    "write_page_graph",
    "write_training_pairs",
]
