"""The masks of MASTER's pre-training tasks: whole words, chosen uniformly or by rarity, and complementary pairs.

MASTER (Zhou et al., 2023) masks *whole words* (every WordPiece of a word together) and corrupts the
chosen tokens BERT's way (80% ``[MASK]``, 10% a random token, 10% unchanged; the label is the
original token). Three kinds of masks:

* **uniform**: words in random order, taken while the masked tokens stay within
  ``round(ratio * tokens)`` (the encoder's 30% MLM);
* **keyword-weighted**: the same, but words are drawn without replacement with probability
  proportional to a rarity weight, so rare, content-bearing words ("keywords") are masked first
  and the decoder has to recover them from the [CLS] bottleneck (the 50% masks of the
  masked-keyword and neighbouring-passage decoders);
* **complementary**: one uniform 50% mask ``M`` for the encoder and its complement (every other
  word token) for the decoder; together they cover each token exactly once.

Rarity weights (:class:`KeywordWeights`) come from the pre-training corpus itself: a word is the
lower-cased text of a tokenizer word (the tokens the tokenizer's pre-tokenizer groups, e.g.
``anti ##dis ##est ##ab ##lish ##ment``). The default, ``inverse_frequency``, is the authors'
released choice: ``1 / collection frequency`` (its count over all passages; 1 for an unseen word),
so a word seen once is drawn a thousand times as readily as one seen a thousand times. ``idf``, the
smoothed ``log((1 + N) / (1 + df)) + 1`` over the ``N`` passages (``df`` counting each passage once),
is a much flatter alternative: its weights lie between 1 and ``log(1 + N) + 1`` (10.6 over the
14,718 passages of the Python documentation), so its 50% keyword mask is close to a uniform one.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keel.core.errors import ConfigError

#: Label of a position that no loss reads (PyTorch's cross-entropy ``ignore_index``).
IGNORE = -100
WEIGHTINGS = ("idf", "inverse_frequency")


@dataclass(frozen=True)
class TokenizedText:
    """One text as token ids with its word structure.

    Attributes:
        ids: Token ids with the tokenizer's special tokens (``[CLS] ... [SEP]``).
        words: The positions in ``ids`` of each word's tokens, in order (special tokens belong to none).
        keys: Each word's lower-cased text, the key of its rarity weight.
    """

    ids: list[int]
    words: list[list[int]]
    keys: list[str]

    @property
    def word_positions(self) -> list[int]:
        """Every position that belongs to a word (all but the special tokens), in order."""
        return [p for word in self.words for p in word]

    def segment(self, first: int, last: int) -> TokenizedText:
        """Words ``first`` to ``last`` (exclusive) as their own text, between this text's first and last token."""
        chosen = self.words[first:last]
        ids = [self.ids[0]] + [self.ids[p] for word in chosen for p in word] + [self.ids[-1]]
        words, position = [], 1
        for word in chosen:
            words.append(list(range(position, position + len(word))))
            position += len(word)
        return TokenizedText(ids, words, list(self.keys[first:last]))


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[TokenizedText]:
    """Tokenize ``texts`` with their word structure, cut to ``max_length`` tokens (the closing token kept).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` whose post-processor adds the special tokens.
        texts: The texts.
        max_length: Longest sequence in tokens, special tokens included.
    """
    out = []
    for text, encoding in zip(texts, tokenizer.encode_batch(list(texts)), strict=True):
        ids, special, word_ids, offsets = (
            encoding.ids, encoding.special_tokens_mask, encoding.word_ids, encoding.offsets
        )  # fmt: skip
        kept = list(range(len(ids)))
        if len(ids) > max_length:
            kept = [*range(max_length - 1), len(ids) - 1]
        words: list[list[int]] = []
        spans: list[tuple[int, int]] = []
        previous = None
        for new, old in enumerate(kept):
            if special[old] or word_ids[old] is None:
                previous = None
                continue
            if word_ids[old] == previous:
                words[-1].append(new)
                spans[-1] = (spans[-1][0], offsets[old][1])
            else:
                words.append([new])
                spans.append(offsets[old])
            previous = word_ids[old]
        out.append(TokenizedText([ids[i] for i in kept], words, [text[a:b].lower() for a, b in spans]))
    return out


class KeywordWeights:
    """Rarity weights of words, from their counts over the pre-training passages (see the module docstring).

    Args:
        document_frequency: Word -> number of passages it occurs in.
        collection_frequency: Word -> number of occurrences in all passages.
        documents: Number of passages counted.
        weighting: ``inverse_frequency`` (the authors') or ``idf``.
    """

    def __init__(
        self,
        document_frequency: Mapping[str, int],
        collection_frequency: Mapping[str, int],
        documents: int,
        weighting: str = "inverse_frequency",
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"keyword weighting must be one of {', '.join(WEIGHTINGS)}, got '{weighting}'")
        self.document_frequency = dict(document_frequency)
        self.collection_frequency = dict(collection_frequency)
        self.documents = documents
        self.weighting = weighting

    @classmethod
    def from_texts(cls, texts: Iterable[TokenizedText], weighting: str = "inverse_frequency") -> KeywordWeights:
        """Count every word of ``texts`` (each text one passage)."""
        document_frequency: Counter[str] = Counter()
        collection_frequency: Counter[str] = Counter()
        documents = 0
        for text in texts:
            documents += 1
            collection_frequency.update(text.keys)
            document_frequency.update(set(text.keys))
        return cls(document_frequency, collection_frequency, documents, weighting)

    def __call__(self, word: str) -> float:
        """The weight of ``word`` (higher = rarer = masked sooner)."""
        if self.weighting == "inverse_frequency":
            return 1.0 / self.collection_frequency.get(word, 1)
        df = self.document_frequency.get(word, 0)
        return math.log((1 + self.documents) / (1 + df)) + 1.0


def _fill(words: Sequence[list[int]], order: Iterable[int], target: int) -> list[int]:
    """Take words in ``order`` while the chosen tokens stay within ``target``; a word that would overflow is skipped."""
    chosen: list[int] = []
    for index in order:
        if len(chosen) >= target:
            break
        if len(chosen) + len(words[index]) <= target:
            chosen.extend(words[index])
    return sorted(chosen)


def _target(words: Sequence[list[int]], ratio: float) -> int:
    tokens = sum(len(word) for word in words)
    return max(1, round(tokens * ratio)) if tokens else 0


def uniform_word_mask(text: TokenizedText, ratio: float, rng: random.Random) -> list[int]:
    """Positions of whole words chosen in random order, about ``ratio`` of the word tokens."""
    order = list(range(len(text.words)))
    rng.shuffle(order)
    return _fill(text.words, order, _target(text.words, ratio))


def keyword_word_mask(text: TokenizedText, ratio: float, weights: KeywordWeights, rng: random.Random) -> list[int]:
    """Positions of whole words drawn without replacement with probability proportional to their weight.

    The draw is a weighted random permutation (Efraimidis and Spirakis: sort by ``u ** (1 / w)``,
    ``u`` uniform in (0, 1)), filled like :func:`uniform_word_mask`; with equal weights it is the
    uniform mask.
    """
    keys = [math.log(1.0 - rng.random()) / weights(word) for word in text.keys]  # log(u) / w, u in (0, 1]
    order = sorted(range(len(text.words)), key=lambda i: -keys[i])
    return _fill(text.words, order, _target(text.words, ratio))


def complementary_masks(text: TokenizedText, ratio: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """A uniform whole-word mask for the encoder and its complement among the word tokens for the decoder."""
    encoder = uniform_word_mask(text, ratio, rng)
    taken = set(encoder)
    return encoder, [p for p in text.word_positions if p not in taken]


@dataclass(frozen=True)
class Corruption:
    """How masked tokens are replaced: BERT's 80% ``[MASK]`` / 10% random token / 10% unchanged.

    Attributes:
        mask_id: The ``[MASK]`` token id.
        vocab_size: Random replacements are drawn from ``[0, vocab_size)`` minus ``special_ids``.
        special_ids: Ids never drawn as random replacements.
        mask_fraction: Share of chosen positions set to ``[MASK]``.
        random_fraction: Share replaced by a random token (the rest keep their token).
    """

    mask_id: int
    vocab_size: int
    special_ids: frozenset[int] = frozenset()
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    def __call__(self, ids: Sequence[int], positions: Iterable[int], rng: random.Random) -> tuple[list[int], list[int]]:
        """``(inputs, labels)``: ``ids`` corrupted at ``positions``; labels are the originals there, -100 elsewhere."""
        inputs, labels = list(ids), [IGNORE] * len(ids)
        for position in positions:
            labels[position] = ids[position]
            draw = rng.random()
            if draw < self.mask_fraction:
                inputs[position] = self.mask_id
            elif draw < self.mask_fraction + self.random_fraction:
                inputs[position] = self._random_token(rng)
        return inputs, labels

    def _random_token(self, rng: random.Random) -> int:
        while True:
            token = rng.randrange(self.vocab_size)
            if token not in self.special_ids:
                return token
