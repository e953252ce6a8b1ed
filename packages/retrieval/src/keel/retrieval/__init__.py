"""keel-retrieval: dense retrieval on offline data.

- :mod:`keel.retrieval.nn`: :class:`~keel.retrieval.nn.BiEncoder` (plain torch: pooling, towers,
  temperature) and the contrastive loss over in-batch, cross-device and hard negatives.
- :mod:`keel.retrieval.biencoder`: :class:`~keel.retrieval.biencoder.BiEncoderModule`, the
  LightningModule that trains a bi-encoder.
- :mod:`keel.retrieval.data`: BEIR folders, training pairs with hard negatives, the DataModule, and
  builders of real offline corpora (WordNet, GCIDE, the Python documentation, man pages).
- :mod:`keel.retrieval.eval`: corpus encoding, faiss indexes, BM25, ir_measures metrics, and the
  all-MiniLM-L6-v2 zero-shot baseline.
- :mod:`keel.retrieval.cli`: ``keel retrieval build-corpus | pairs | encode | index | evaluate``.

Method folders (one per paper id) build on these parts.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keel-retrieval")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
