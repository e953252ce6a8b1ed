"""Measurements of the data the methods train on, behind the figures the experiment READMEs cite.

Each function returns a JSON-able dict; ``keel retrieval diagnose KIND --data DIR`` prints it:

* ``links`` (:func:`link_targets`): how many of a page graph's links go to its most cited pages;
* ``pairs`` (:func:`pair_concentration`): for the ICT, BFS or WLP pairs of a folder, the share of
  pairs whose query, or whose positive passage, is one of the most repeated, and the sections the
  positives come from;
* ``candidates`` (:func:`pseudo_query_room`): how many pseudo queries CAPSTONE's curriculum has to
  order for each training positive, and how often they tie with the query;
* ``overlap`` (:func:`headword_overlap`): the share of dictionary definitions that contain a word
  beginning like their headword (the lexical match BM25 and a random encoder can use);
* ``layers`` (:func:`teacher_layer_losses`): a teacher's in-batch loss at every layer and LEAD's
  layer weights ``softmax(-loss / tau)``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from keel.retrieval.data.beir import BeirData


def top_share(items: Iterable[Hashable], top: int) -> dict[str, Any]:
    """The ``top`` most common items, with their counts, and the share of all items they make up."""
    counts = Counter(items)
    total = sum(counts.values())
    common = counts.most_common(top)
    return {
        "count": total,
        "distinct": len(counts),
        "top_share": sum(c for _, c in common) / total if total else 0.0,
        "most_common": [[item, count] for item, count in common],
    }


def link_targets(graph: Any, top: int = 4) -> dict[str, Any]:
    """:func:`top_share` of the targets of a :class:`~keel.retrieval.ict_bfs_wlp.PageGraph`'s links."""
    return top_share((target for _, target in graph.links), top)


def pair_concentration(pairs: Sequence[tuple[str, Any]], data: BeirData, graph: Any, top: int = 10) -> dict[str, Any]:
    """How concentrated pre-training pairs are on a few queries, positives and sections.

    Args:
        pairs: ``(query, positive)`` pairs; a positive is a passage id (BFS, WLP) or a
            :class:`~keel.retrieval.data.Passage` (ICT, whose positive is an edited passage).
        data: The folder the pairs were built from.
        graph: Its :class:`~keel.retrieval.ict_bfs_wlp.PageGraph` (gives each passage's section).
        top: How many of the most repeated texts to count.
    """
    section_of = {pid: s for page in graph.sections.values() for s, ids in page.items() for pid in ids}
    ids = [p if isinstance(p, str) else p.id.removeprefix("ict:") for _, p in pairs]
    return {
        "pairs": len(pairs),
        "queries": top_share((q for q, _ in pairs), top),
        "positive_texts": top_share((data.corpus[pid].text for pid in ids), top),
        "positive_sections": top_share((section_of.get(pid, "") for pid in ids), top),
    }


def pseudo_query_room(
    data: BeirData, expander: Any, split: str = "train", parts: int = 3, seed: int = 0
) -> dict[str, float]:
    """What CAPSTONE's curriculum has to order: the ranked pseudo queries of each training positive.

    Ranked as the collator ranks them (:func:`~keel.retrieval.capstone.rank_by_similarity`, the
    real query left out), against the query the positive is judged for.
    """
    from keel.retrieval.capstone.curriculum import rank_by_similarity
    from keel.retrieval.capstone.rouge import rouge_l

    queries = data.split_queries(split)
    rng = random.Random(seed)
    positives = candidates = zeros = fewer = at_most_one = tied = 0
    for qid, relevant in data.qrels[split].items():
        for pid in relevant:
            ranked = rank_by_similarity(expander([data.corpus[pid]])[0], queries[qid].text, rng)
            scores = [rouge_l(c, queries[qid].text) for c in ranked]
            positives += 1
            candidates += len(ranked)
            zeros += sum(s == 0 for s in scores)
            fewer += len(ranked) < parts
            at_most_one += len(ranked) <= 1
            tied += len(ranked) > 1 and len(set(scores)) == 1
    share = 1 / max(positives, 1)
    return {
        "positives": positives,
        "candidates_per_positive": candidates * share,
        f"fewer_than_{parts}": fewer * share,
        "at_most_1": at_most_one * share,
        "all_tied": tied * share,
        "candidates_scoring_0": zeros / max(candidates, 1),
    }


def headword_overlap(data: BeirData, split: str = "test", prefix: int = 5) -> dict[str, float]:
    """The share of a dictionary split's definitions holding a word that starts like their headword.

    A word of the definition matches when it and a word of the headword (both lower-cased, at
    least four letters) share their first ``prefix`` letters.
    """
    queries = data.split_queries(split)
    word = re.compile(r"[a-z]+")
    matched = 0
    for qid, relevant in data.qrels[split].items():
        heads = {w[:prefix] for pid in relevant for w in word.findall(data.corpus[pid].text.lower()) if len(w) >= 4}
        found = {w[:prefix] for w in word.findall(queries[qid].text.lower()) if len(w) >= 4}
        matched += bool(heads & found)
    return {"queries": len(data.qrels[split]), "share": matched / max(len(data.qrels[split]), 1)}


def teacher_layer_losses(
    model: Any,
    tokenizer: Any,
    data: BeirData,
    split: str = "train",
    batches: int = 5,
    batch_size: int = 32,
    max_length: int = 32,
    layer_temperature: float = 10.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Each layer's in-batch InfoNCE loss over random batches of ``split``, and LEAD's weights of them.

    A batch is ``batch_size`` queries, each with the first passage judged for it; every layer's
    pooled, normalised embeddings score the batch at the model's temperature (LEAD's layer scores).
    The model is evaluated in eval mode and left in the mode it was in.
    """
    import torch
    import torch.nn.functional as F

    from keel.core.distill.data import encode, pad
    from keel.retrieval.lead.model import layer_embeddings, layer_weights

    queries = data.split_queries(split)
    judged = sorted(data.qrels[split])
    chosen = random.Random(seed).sample(judged, min(len(judged), batches * batch_size))
    losses, weights = [], []
    was_training = model.training
    model.eval()
    for start in range(0, len(chosen) - batch_size + 1, batch_size):
        batch = chosen[start : start + batch_size]
        passages = [data.corpus[next(iter(data.qrels[split][qid]))].full_text for qid in batch]
        q_ids, q_mask = pad(encode(tokenizer, [queries[qid].text for qid in batch], max_length))
        p_ids, p_mask = pad(encode(tokenizer, passages, max_length))
        with torch.no_grad():
            q_layers = layer_embeddings(model, q_ids, q_mask, "query")
            p_layers = layer_embeddings(model, p_ids, p_mask, "passage")
        scores = [q @ p.T / model.temperature for q, p in zip(q_layers[1:], p_layers[1:], strict=True)]
        labels = torch.arange(len(batch))
        losses.append([F.cross_entropy(s, labels).item() for s in scores])
        weights.append(layer_weights(scores, labels, layer_temperature).tolist())
    model.train(was_training)
    return {"layers": len(losses[0]) if losses else 0, "losses": losses, "weights": weights}
