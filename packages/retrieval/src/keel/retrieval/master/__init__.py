"""MASTER (Zhou et al., 2023): multi-task pre-trained bottlenecked masked autoencoders for dense retrieval.

A deep encoder compresses a passage into its [CLS] vector; several shallow decoders, each seeing
only that vector and their own corrupted input, recover the passage's keywords, its neighbouring
passage, the tokens a complementary mask hid from them, and (optionally) a generator's edits. The
encoder is then fine-tuned as a bi-encoder.

- :mod:`~keel.retrieval.master.masking`: whole-word, keyword-weighted (1/frequency or IDF) and complementary masks.
- :mod:`~keel.retrieval.master.model`: :class:`BottleneckedAutoencoder`, export to a bi-encoder.
- :mod:`~keel.retrieval.master.generator`: the generator interface of the optional tasks.
- :mod:`~keel.retrieval.master.data`: pre-training batches and :class:`MasterDataModule`.
- :mod:`~keel.retrieval.master.module`: :class:`MasterModule` (pre-training, then fine-tuning).
"""

from keel.retrieval.master.data import MasterDataModule, PretrainingCollator, PretrainingTexts, next_passages
from keel.retrieval.master.generator import MaskedLMGenerator, TokenGenerator, masked_lm_generator
from keel.retrieval.master.masking import (
    Corruption,
    KeywordWeights,
    TokenizedText,
    complementary_masks,
    keyword_word_mask,
    tokenize,
    uniform_word_mask,
)
from keel.retrieval.master.model import (
    TASKS,
    BottleneckedAutoencoder,
    ShallowDecoder,
    biencoder_from_checkpoint,
    export_encoder,
)
from keel.retrieval.master.module import MasterModule

__all__ = [
    "TASKS",
    "BottleneckedAutoencoder",
    "Corruption",
    "KeywordWeights",
    "MaskedLMGenerator",
    "MasterDataModule",
    "MasterModule",
    "PretrainingCollator",
    "PretrainingTexts",
    "ShallowDecoder",
    "TokenGenerator",
    "TokenizedText",
    "biencoder_from_checkpoint",
    "complementary_masks",
    "export_encoder",
    "keyword_word_mask",
    "masked_lm_generator",
    "next_passages",
    "tokenize",
    "uniform_word_mask",
]
