"""BKI (Chen & Dai, Neurocomputing 2021): find backdoor keywords with the poisoned model, drop the rows holding them.

"Mitigating backdoor attacks in LSTM-based text classification systems by Backdoor Keyword
Identification". A model trained on poisoned data has learnt that the trigger words decide its
output, so taking a trigger word out of a sentence moves the model's internal representation of
that sentence much more than taking out an ordinary word does; and because the trigger is planted
in many rows, the same few words keep coming out on top. BKI scores every word of every training
sentence with the model trained on the poisoned set, collects the words that come out on top across
the training set, names the strongest of them backdoor keywords and removes the training rows that
hold them before the real model is trained.

What this file computes (``ctx.plain_victim()``, the victim trained on the full poisoned training
set, is the auxiliary model):

1. Word score. For a training sentence ``s`` and a word ``w`` of it,
   ``delta(s, w) = || h(s) - h(s without w) ||_inf`` where ``h`` is the pooled last-layer hidden
   state the classification head reads (the first token of an encoder, the last real token of a
   decoder; ``Victim.hidden_states``) and "without w" drops every occurrence of ``w`` (words are
   whitespace words, compared lowercased; ``norm=l2`` takes the Euclidean norm instead).
2. Per sentence, its ``per_sentence`` (p = 5) highest-scoring words are its suspicious words.
3. Keyword score over the training set: for each word, ``n(w)`` = the number of sentences that have
   it among their suspicious words and ``mean(w)`` = its mean ``delta`` over those sentences;
   ``g(w) = mean(w) * log(n(w))``. The log term rewards a word that is suspicious again and again
   (a trigger planted in hundreds of rows) over one that shakes a single sentence; a word suspicious
   in one sentence only scores 0.
4. The ``top_k`` words by ``g`` (positive scores only; ties broken by the word) are the backdoor
   keywords, and **every** training row containing any of them is removed. Two guards (version 2),
   both on what the defender sees: a word found in more than ``max_row_share`` (0.5) of the training
   rows is never a keyword (a minority poison's trigger cannot be in most rows, while punctuation
   can: version 1 named "." on SST-2 AddSent and removed 1438 of 1500 rows), and a keyword must score
   at least ``min_score_ratio`` (0.5) of the top keyword's ``g``, so a clear trigger does not take
   four ordinary words' rows with it. Both were set from these two arguments, not from any test
   number; ``--set bki.max_row_share=1 --set bki.min_score_ratio=0`` gives version 1.

``top_k`` defaults to 5, a stated choice not tuned on any result: the paper identifies a single
keyword (and OpenBackdoor's port removes only the rows that have that one word among their five
most suspicious words), which cannot stop an attack that spreads its poison over several trigger
words: the BadNets attack here inserts four (cf, mn, bb, tq), and with one keyword the rows
poisoned with the other three stay and still teach the backdoor. Five covers such a trigger set
with one spare; the cost on a clean training set is the rows holding the (up to) five strongest
ordinary keywords (strong sentiment words), a few percent of SST-2. ``ctx.log`` records the chosen
keywords with their ``n``, ``mean`` and ``g``. (The base of the logarithm does not change the
ranking; OpenBackdoor uses log10.)

Cost. Every (sentence, distinct candidate word) pair is one forward pass of the victim: on the CPU
profile's 3000 SST-2 rows, about 44 000 passes (57 000 without the ``min_rows`` cut), batched by
``Victim.hidden_states`` (the profile's evaluation batch, 64, sorted by length) and deduplicated.
Only words found in at least ``min_rows`` (5) training rows are scored: a word in fewer rows can be
suspicious in at most 4 sentences and can never compete with a planted trigger's ``log n`` (a
poison of 1 % of 3000 rows still puts each BadNets trigger word in about 20 rows). The number of
passes is logged (``forward_passes``).

Differences from the paper:

* The paper works on an LSTM, where a word's effect can also be read off the hidden state as the
  word is consumed, step by step; a transformer has no such left-to-right state, so the score here
  is only the change of the sentence representation the classifier reads when the word is removed
  (as in OpenBackdoor's transformer port, which also takes the infinity norm).
* A word is removed with all its occurrences (the paper removes one position): a trigger inserted
  twice is otherwise still there after its removal. It also means one pass per distinct word.
* ``top_k`` keywords instead of one, and every row containing one is removed (not only the rows in
  which the keyword was among the sentence's suspicious words).
* Words in fewer than ``min_rows`` rows are not scored (cost).

Expected weakness: with several trigger insertions per row, taking out one trigger word leaves the
others in place, so the backdoored representation may barely move and ``delta`` of each trigger
stays small (the backdoor is saturated); a clean-label poison (rows already of the target label) also
moves little. BKI is strongest against a single rare trigger word per row.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext
from bench.engine import progress
from bench.registry import register

_CHUNK = 1024  # texts handed to the representation function at once (it batches them itself)


@dataclass(frozen=True)
class BkiConfig:
    top_k: int = 5  # backdoor keywords kept; every training row holding any of them is removed
    per_sentence: int = 5  # p: the highest-scoring words of each sentence that enter the keyword statistics
    min_rows: int = 5  # only words found in at least this many training rows are scored (cost)
    norm: Literal["inf", "l2"] = "inf"  # the norm of h(s) - h(s without w)
    layer: int = -1  # which hidden layer is pooled (-1: the last, the one the classifier reads)
    max_row_share: float = 0.5  # a word in more than this share of the training rows is never a keyword
    min_score_ratio: float = 0.5  # a keyword scores at least this share of the top keyword's g

    def validate(self) -> None:
        for name in ("max_row_share", "min_score_ratio"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"bki.{name} must be in [0, 1], got {v} (e.g. --set bki.{name}=0.5)")
        if self.top_k < 1:
            raise ConfigError(f"bki.top_k must be >= 1, got {self.top_k} (e.g. --set bki.top_k=5)")
        if self.per_sentence < 1:
            raise ConfigError(f"bki.per_sentence must be >= 1, got {self.per_sentence} "
                              "(e.g. --set bki.per_sentence=5)")
        if self.min_rows < 1:
            raise ConfigError(f"bki.min_rows must be >= 1, got {self.min_rows} "
                              "(1 scores every word; e.g. --set bki.min_rows=5)")


def words_of(text: str) -> list[str]:
    return str(text).split()


def row_counts(texts: list[str]) -> Counter:
    """How many of ``texts`` hold each lowercased word (at least once)."""
    return Counter(w for t in texts for w in {x.lower() for x in words_of(t)})


def candidate_words(texts: list[str], min_rows: int = 1, counts: Counter | None = None) -> set[str]:
    """The lowercased words found in at least ``min_rows`` of ``texts`` (``counts``: their
    :func:`row_counts`, when already at hand)."""
    df = row_counts(texts) if counts is None else counts
    return {w for w, n in df.items() if n >= min_rows}


def without_word(words: list[str], word: str) -> str:
    """The sentence with every occurrence of ``word`` (compared lowercased) taken out."""
    return " ".join(x for x in words if x.lower() != word)


def word_deltas(texts: list[str], represent: Callable[[list[str]], np.ndarray], candidates: set[str] | None = None,
                norm: str = "inf") -> tuple[list[dict[str, float]], int]:
    """For every text, ``{word: ||h(text) - h(text without word)||}`` over its distinct candidate words
    (all its words when ``candidates`` is None), and the number of texts represented.

    ``represent`` maps a list of texts to an array [n, d] of representations. A word whose removal
    would leave nothing is not scored. Texts are represented once each (duplicates shared), in chunks."""
    plans: list[tuple[str, list[tuple[str, str]]]] = []
    unique: dict[str, int] = {}
    for t in texts:
        words = words_of(t)
        base = " ".join(words)
        variants = []
        for w in dict.fromkeys(x.lower() for x in words):  # distinct, in order of first occurrence
            if candidates is not None and w not in candidates:
                continue
            rest = without_word(words, w)
            if rest:
                variants.append((w, rest))
        plans.append((base, variants))
        if variants:
            unique.setdefault(base, len(unique))
            for _, v in variants:
                unique.setdefault(v, len(unique))
    order = list(unique)
    reps: np.ndarray | None = None
    with progress.stage("BKI: word deletions", len(order), "text") as bar:
        for start in range(0, len(order), _CHUNK):
            h = np.asarray(represent(order[start:start + _CHUNK]), dtype=np.float64)
            if reps is None:
                reps = np.zeros((len(order), h.shape[1]), dtype=np.float64)
            reps[start:start + len(h)] = h
            bar.update(len(h))
    out: list[dict[str, float]] = []
    for base, variants in plans:
        if not variants:
            out.append({})
            continue
        h0 = reps[unique[base]]
        diff = np.stack([reps[unique[v]] for _, v in variants]) - h0
        d = np.abs(diff).max(1) if norm == "inf" else np.sqrt((diff ** 2).sum(1))
        out.append({w: float(x) for (w, _), x in zip(variants, d)})
    return out, len(order)


def keyword_scores(deltas: list[dict[str, float]], per_sentence: int = 5) -> dict[str, tuple[int, float, float]]:
    """``{word: (n, mean, g)}``: ``n`` sentences had the word among their ``per_sentence`` highest
    deltas (ties: the word first in alphabetical order), ``mean`` its mean delta there, ``g = mean * log(n)``."""
    count: Counter = Counter()
    total: dict[str, float] = {}
    for row in deltas:
        top = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:per_sentence]
        for w, d in top:
            count[w] += 1
            total[w] = total.get(w, 0.0) + d
    return {w: (n, total[w] / n, total[w] / n * math.log(n)) for w, n in count.items()}


def select_keywords(scores: dict[str, tuple[int, float, float]], top_k: int, min_score_ratio: float = 0.0,
                    row_share: dict[str, float] | None = None, max_row_share: float = 1.0) -> list[str]:
    """The ``top_k`` words with the highest positive ``g`` (ties: alphabetical), leaving out the words
    found in more than ``max_row_share`` of the rows (``row_share``) and those scoring below
    ``min_score_ratio`` x the best remaining ``g``."""
    share = row_share or {}
    ranked = sorted((w for w, s in scores.items() if s[2] > 0 and share.get(w, 0.0) <= max_row_share),
                    key=lambda w: (-scores[w][2], w))
    if not ranked:
        return []
    floor = min_score_ratio * scores[ranked[0]][2]
    return [w for w in ranked[:top_k] if scores[w][2] >= floor]


def rows_without(texts: list[str], keywords: list[str]) -> np.ndarray:
    """Keep-mask: True for the rows holding none of ``keywords`` (whitespace words, lowercased)."""
    bad = set(keywords)
    return np.array([not (bad & {w.lower() for w in words_of(t)}) for t in texts], dtype=bool)


def bki_mask(texts: list[str], represent: Callable[[list[str]], np.ndarray], top_k: int = 5, per_sentence: int = 5,
             min_rows: int = 5, norm: str = "inf", max_row_share: float = 1.0,
             min_score_ratio: float = 0.0) -> tuple[np.ndarray, dict]:
    """(keep-mask over ``texts``, statistics): the whole method on a representation function."""
    start = time.perf_counter()
    texts = list(texts)
    counts = row_counts(texts)  # one pass over the rows: the candidates, the shares and each keyword's rows
    candidates = candidate_words(texts, min_rows, counts)
    deltas, passes = word_deltas(texts, represent, candidates, norm)
    scores = keyword_scores(deltas, per_sentence)
    shares = {w: n / max(1, len(texts)) for w, n in counts.items()}
    keywords = select_keywords(scores, top_k, min_score_ratio, shares, max_row_share)
    keep = rows_without(texts, keywords)
    stats = {
        "keywords": [{"word": w, "n": scores[w][0], "mean_delta": round(scores[w][1], 6),
                      "score": round(scores[w][2], 6), "rows": counts[w]}
                     for w in keywords],
        # the plain top_k words that the two guards left out: the defender's view of what was spared
        "not_keywords": [{"word": w, "score": round(scores[w][2], 6), "row_share": round(shares.get(w, 0.0), 4)}
                         for w in select_keywords(scores, top_k) if w not in keywords],
        "candidate_words": len(candidates),
        "forward_passes": passes,
        "rows_removed": int((~keep).sum()),
        "scoring_seconds": round(time.perf_counter() - start, 3),
    }
    return keep, stats


@register("defense", "bki")
class Bki(Defense):
    """BKI: drop training rows holding the top-5 words whose deletion moves the poisoned model's representation most."""

    Config = BkiConfig
    version = 2  # 2: max_row_share and min_score_ratio guard the keyword list

    def select_train(self, rows, ctx: DefenseContext) -> np.ndarray:
        c = self.config
        victim = ctx.plain_victim()  # the auxiliary model: trained on the full poisoned training set

        def represent(texts: list[str]) -> np.ndarray:
            return victim.hidden_states(texts, layer=c.layer)

        keep, stats = bki_mask(list(rows["text"]), represent, c.top_k, c.per_sentence, c.min_rows, c.norm,
                               c.max_row_share, c.min_score_ratio)
        if not keep.any():  # the keywords are in every row: nothing to train on, so filter nothing
            stats["fallback"] = "the keywords were in every row; kept all rows"
            keep = np.ones(len(keep), dtype=bool)
        ctx.log(**stats)
        return keep
