"""STRIP for text (Gao et al., 2021): reject inputs whose prediction survives heavy perturbation.

"Design and Evaluation of a Multi-Domain Trojan Detection Method on Deep Neural Networks" (the
text version of STRIP). A backdoored model's prediction on a triggered input is held by the trigger,
so it stays confident however much of the rest of the sentence is replaced; a clean input's
prediction wavers once a quarter of its words are swapped for words of other sentences. STRIP makes
``n_perturb`` perturbed copies of every input, classifies them, and scores the input by the mean
entropy of the class distributions of its own copies. Inputs scoring below a threshold (low
entropy: suspiciously stable) are rejected.

Perturbation, as in the reference implementation: for each copy, a donor sentence is drawn from the
clean calibration rows, and a share ``replace_ratio`` of the input's words (at least one; positions
drawn at random, without repetition) is replaced by the donor's words in decreasing order of their
tf-idf weight over the calibration rows (content words first, frequent words last).

The threshold is the ``frr`` quantile of the scores of the clean calibration rows, so about that
share of clean inputs is rejected. Every input is perturbed with a generator seeded by the cell's
seed and the input's text, so its score does not depend on which other inputs come with it.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.config import ConfigError
from bench.defense import CleanBudgetError, Defense, DefenseContext
from bench.engine import progress
from bench.registry import register


@dataclass(frozen=True)
class StripConfig:
    n_perturb: int = 20  # perturbed copies per input
    replace_ratio: float = 0.25  # share of an input's words replaced in each copy (at least one)
    frr: float = 0.05  # false rejection rate aimed at on clean inputs (the threshold's quantile)
    n_calibration: int = 200  # clean calibration rows: the donors of words and the threshold

    def validate(self) -> None:
        if self.n_perturb < 1:
            raise ConfigError(f"strip.n_perturb must be >= 1, got {self.n_perturb}")
        if not 0.0 < self.replace_ratio <= 1.0:
            raise ConfigError(f"strip.replace_ratio must be in (0, 1], got {self.replace_ratio}")
        if not 0.0 <= self.frr < 1.0:
            raise ConfigError(f"strip.frr must be in [0, 1), got {self.frr}")
        if self.n_calibration < 1:
            raise ConfigError(f"strip.n_calibration must be >= 1, got {self.n_calibration}")


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis; 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(-1)


def per_input_entropy(probs: np.ndarray) -> np.ndarray:
    """``probs`` [n_inputs, n_perturb, n_labels] -> [n_inputs]: for each input, the mean over its
    own perturbed copies of the entropy of each copy's class distribution."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected probs of shape [n_inputs, n_perturb, n_labels], got {probs.shape}")
    return entropy(probs).mean(axis=1)


def donor_words(texts: list[str]) -> list[list[str]]:
    """For each donor text, its distinct words by decreasing tf-idf over ``texts`` (ties: first seen)."""
    docs = [str(t).split() for t in texts]
    df = Counter(w for d in docs for w in {x.lower() for x in d})
    n = len(docs)
    out = []
    for d in docs:
        tf = Counter(w.lower() for w in d)
        first: dict[str, tuple[int, str]] = {}
        for i, w in enumerate(d):
            first.setdefault(w.lower(), (i, w))
        weight = {w: tf[w] * (math.log((1 + n) / (1 + df[w])) + 1.0) for w in tf}
        ranked = sorted(first, key=lambda w: (-weight[w], first[w][0]))
        out.append([first[w][1] for w in ranked])
    return out


def perturb(text: str, donors: list[list[str]], n_perturb: int, replace_ratio: float,
            rng: np.random.Generator) -> list[str]:
    """``n_perturb`` copies of ``text``, each with ``max(1, int(ratio * n_words))`` words replaced
    by the top tf-idf words of one random donor."""
    words = str(text).split()
    usable = [d for d in donors if d]
    if not words or not usable:
        return [str(text)] * n_perturb
    m = min(len(words), max(1, int(len(words) * replace_ratio)))
    copies = []
    for _ in range(n_perturb):
        donor = usable[int(rng.integers(len(usable)))]
        positions = rng.choice(len(words), size=m, replace=False)
        new = list(words)
        for k, pos in enumerate(positions):
            new[int(pos)] = donor[k % len(donor)]
        copies.append(" ".join(new))
    return copies


def _text_purpose(text: str) -> str:
    return "strip-perturb:" + hashlib.sha256(str(text).encode()).hexdigest()[:32]


@register("defense", "strip")
class Strip(Defense):
    """STRIP: reject inputs whose prediction stays confident under word replacement (FRR 5% on clean rows)."""

    Config = StripConfig

    @classmethod
    def rejects(cls) -> bool:
        return True

    def scores(self, texts: list[str], victim, ctx: DefenseContext) -> np.ndarray:
        """The STRIP score (mean entropy over the input's own perturbed copies) of every text."""
        c = self.config
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        copies: list[str] = []
        for t in texts:
            copies.extend(perturb(t, self.donors, c.n_perturb, c.replace_ratio, ctx.rng(_text_purpose(t))))
        probs = np.asarray(victim.probs(copies), dtype=np.float64)  # input-major: text 0's copies first
        return per_input_entropy(probs.reshape(len(texts), c.n_perturb, -1))

    def calibrate(self, victim, ctx: DefenseContext) -> None:
        rows = ctx.clean(self.config.n_calibration, strict=False)  # at most n_calibration rows
        texts = list(rows["text"])
        if not texts:
            raise CleanBudgetError("strip needs clean calibration rows (its word donors and its threshold) but the "
                                   "defender budget is empty; raise it with --set profile.clean_size=200")
        self.donors = donor_words(texts)
        clean_scores = self.scores(texts, victim, ctx)
        self.threshold = float(np.quantile(clean_scores, self.config.frr))
        ctx.log(threshold=self.threshold, calibration_rows=len(texts),
                calibration_score_mean=float(clean_scores.mean()),
                calibration_rejected=float(np.mean(clean_scores < self.threshold)))

    def predict(self, texts: list[str], victim, ctx: DefenseContext) -> np.ndarray:
        if getattr(self, "threshold", None) is None:
            raise RuntimeError("strip: calibrate() must run before predict()")
        texts = list(texts)
        s = self.scores(texts, victim, ctx)
        rejected = s < self.threshold
        labels = np.full(len(texts), -1, dtype=np.int64)
        kept = np.flatnonzero(~rejected)
        if len(kept):
            labels[kept] = np.asarray(victim.predict([texts[i] for i in kept]), dtype=np.int64)
        ctx.log(rejected_share=float(rejected.mean()) if len(texts) else 0.0,
                score_mean=float(s.mean()) if len(texts) else None)
        return labels
