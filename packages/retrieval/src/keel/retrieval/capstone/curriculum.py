"""CAPSTONE's curriculum: which pseudo query expands a passage at each point of training.

He et al. (2023) expand every training passage (the positive and the hard negatives) with one pseudo
query. The passage's candidates, without the training query itself, are sorted by ROUGE-L against the
training query, most similar first, and cut into ``N`` equal parts (part 1 the most similar). Training
runs the parts from least to most similar (the authors' ``gradual`` schedule):

    part(t) = max(N - floor(t / floor(T / N)), 1)

for global step ``t`` of ``T``, so the first ``T / N`` steps draw from part ``N`` and the last ones from
part 1, and within a part the query is drawn uniformly. The model thus learns to read the passage
first (its pseudo queries say little about the real query) and the query-like expansions last,
while it never sees the real query appended, which it would not have at inference.

Other schedules, the baselines of the paper's argument: ``random`` draws uniformly from all
candidates throughout; ``gold`` appends the real training query (the train/inference mismatch that
CAPSTONE avoids); ``none`` does not expand (plain dual-encoder fine-tuning).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from keel.core.errors import ConfigError
from keel.retrieval.capstone.rouge import rouge_l, words

CURRICULA = ("gradual", "random", "gold", "none")


def check_curriculum(curriculum: str, parts: int) -> None:
    """Raise a ConfigError unless ``curriculum`` is known and ``parts`` >= 1."""
    if curriculum not in CURRICULA:
        raise ConfigError(f"curriculum must be one of {', '.join(CURRICULA)}, got '{curriculum}'")
    if parts < 1:
        raise ConfigError(f"parts must be >= 1, got {parts}")


def curriculum_part(step: int, total_steps: int, parts: int) -> int:
    """The part (1 = most similar, ``parts`` = least) that training step ``step`` of ``total_steps`` draws from."""
    iteration = max(1, total_steps // parts)  # steps per part
    return max(parts - step // iteration, 1)


def rank_by_similarity(candidates: Sequence[str], query: str, rng: random.Random | None = None) -> list[str]:
    """``candidates`` without ``query`` itself, by ROUGE-L against ``query``, most similar first.

    Ties are common (a pseudo query often shares no word with the query, and many score 0), so their
    order decides which part a candidate falls in. With ``rng``, tied candidates come in a random
    order, as in the official code (its candidates pass through a ``set`` before ``torch.topk``); an
    expander's order (title first, then the passage's sentences) would otherwise put the first views
    used at inference into the most similar part. Without ``rng``, ties keep the expander's order.
    """
    target = words(query)
    kept = [c for c in dict.fromkeys(candidates) if words(c) != target]
    if rng is not None:
        rng.shuffle(kept)
    scores = [rouge_l(c, query) for c in kept]
    order = sorted(range(len(kept)), key=lambda i: -scores[i])  # stable: ties stay in the order above
    return [kept[i] for i in order]


def part_members(ranked: Sequence[str], part: int, parts: int) -> list[str]:
    """The candidates of ``part`` (1-based) when ``ranked`` is cut into ``parts`` equal parts.

    Part ``k`` holds the ranks ``[floor(m (k-1) / N), floor(m k / N))`` of the ``m`` candidates; when
    there are fewer candidates than parts and the part is empty, it holds the nearest candidate
    below it in the ranking (the authors' rule), so every part of a non-empty list has a member.
    """
    m = len(ranked)
    if m == 0:
        return []
    start, end = m * (part - 1) // parts, m * part // parts
    if start == end:
        return [ranked[min(start, m - 1)]]
    return list(ranked[start:end])


def curriculum_views(ranked: Sequence[str], parts: int, rng: random.Random) -> list[str | None]:
    """One candidate drawn uniformly from each part, part 1 first; ``None`` (no expansion) when there is none."""
    views: list[str | None] = []
    for part in range(1, parts + 1):
        members = part_members(ranked, part, parts)
        views.append(rng.choice(members) if members else None)
    return views
