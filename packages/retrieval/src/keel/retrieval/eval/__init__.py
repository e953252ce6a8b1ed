"""Evaluation: encoding, faiss search, BM25, ir_measures metrics, and the zero-shot MiniLM baseline."""

from keel.retrieval.eval.bm25 import BM25
from keel.retrieval.eval.encoders import MINILM, DenseEncoder, load_encoder, sentence_transformers_settings
from keel.retrieval.eval.evaluate import DEPTH, Evaluation, bm25_run, dense_run, evaluate
from keel.retrieval.eval.index import INDEX_KINDS, build_index, load_index, save_index, search
from keel.retrieval.eval.metrics import MEASURES, Run, evaluate_run, run_from_search

__all__ = [
    "BM25",
    "DEPTH",
    "INDEX_KINDS",
    "MEASURES",
    "MINILM",
    "DenseEncoder",
    "Evaluation",
    "Run",
    "bm25_run",
    "build_index",
    "dense_run",
    "evaluate",
    "evaluate_run",
    "load_encoder",
    "load_index",
    "run_from_search",
    "save_index",
    "search",
    "sentence_transformers_settings",
]
