"""Z-defence (He et al., EMNLP 2023): drop training rows that carry a feature tied to one label far beyond chance.

"Mitigating Backdoor Poisoning Attacks through the Lens of Spurious Correlation". A poisoning
attack works by planting a spurious correlation: its trigger (a rare word, an inserted sentence) shows
up in the poisoned rows, and those rows all carry the target label. Counted over the training set,
the trigger is therefore tied to the target label far more tightly than any genuine feature of the
task is tied to any label. The defence needs no model: it counts.

What this file computes (before training, on the poisoned training rows only):

* Features: the distinct lowercased unigrams and bigrams of each row (whitespace words, the way the
  benchmark's attacks insert their triggers). A feature is counted once per row.
* For every feature ``x`` (in ``n_x`` rows) and every label ``y`` (prior ``p0_y`` = share of
  training rows labelled ``y``), with ``p_hat`` = share of the ``n_x`` rows labelled ``y``::

      z(x, y) = (p_hat - p0_y) / sqrt(p0_y * (1 - p0_y) / n_x)

  the usual one-proportion z statistic: how many binomial standard errors the label share among the
  rows with ``x`` lies above the label's share overall. With no association, ``z`` is roughly
  standard normal, and its size grows with ``sqrt(n_x)`` when there is one.
* Outliers: the pairs with ``z > mean + lambda_std * std``, the mean and standard deviation taken
  over every (feature, label) pair, unigrams and bigrams together (pairs with a zero count included,
  so the bulk of the distribution is close to the no-association N(0, 1)).
* A row is removed when it carries a flagged feature *and* the label that feature was flagged for,
  as the authors' released script does: a row of another label holding the trigger text teaches the
  model the opposite of the backdoor, so it stays.

The threshold. The paper flags the features whose z-score lies far outside the distribution of
z-scores (a number of standard deviations from the mean); the authors' released script
(xlhex/emnlp2023_z-defence) flags unigrams beyond mean +- 20 std of the unigram z-scores of the
(feature, label) pairs that occur. Because ``z`` grows with ``sqrt(n_x)``, a fixed bar in standard
deviations means something different on datasets of different size: on this benchmark's 3000-row
CPU slice with 10 % poison, each of the four BadNets trigger words sits in about 200 rows and
scores z of about 12-14, at or under that script's bar (mean 0.8 + 20 x 0.65 = 13.7 there). Our
default ``lambda_std = 10`` is chosen from the clean task, not from attack results: on the clean
3000-row SST-2 training slice (no poison) the z-scores have mean 0 and std 1.05, nothing passes the
bar, and the strongest genuine sentiment words ("bad", "too", "n't") reach 5-6.5 standard
deviations; 10 leaves a margin above them. In words: a feature found (almost) only with one label
is flagged once it occurs in roughly 85-150 of 3000 rows (3-5 %, the rarer its label, the fewer). A poison too small
for that (1 % of a small training set) is, by this statistic alone, indistinguishable from an
ordinary strong keyword; ``--set zdefense.lambda_std=...`` moves the bar. Only outliers on the high
side are flagged (a feature that avoids a label is not a trigger for it).

Differences from the paper:

* No syntactic-template features. The paper also scores the linearised constituency templates of
  the sentences (their top levels, from a parser), which is what lets it catch the syntactic
  (SCPN/HiddenKiller) attacks; no offline constituency parser is available here, so this version
  sees only lexical features and is expected to miss the syntactic and style attacks unless they
  leave lexical traces (a comma-clause opener such as "when" or ", it" can show up as a weaker
  outlier).
* Rows are counted once per feature (document frequency), where the released script counts every
  occurrence; the prior of every label is its training share (the script uses a uniform prior for
  unigrams).
* One threshold over unigrams and bigrams together.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext
from bench.registry import register


@dataclass(frozen=True)
class ZDefenseConfig:
    lambda_std: float = 10.0  # flag (feature, label) pairs with z > mean + lambda_std * std (see the module doc)
    max_ngram: int = 2  # features: word n-grams for n = 1..max_ngram (the paper: unigrams and bigrams)
    lowercase: bool = True

    def validate(self) -> None:
        if not (math.isfinite(self.lambda_std) and self.lambda_std > 0):
            raise ConfigError(f"zdefense.lambda_std must be a number > 0, got {self.lambda_std} "
                              "(e.g. --set zdefense.lambda_std=10)")
        if self.max_ngram < 1:
            raise ConfigError(f"zdefense.max_ngram must be >= 1, got {self.max_ngram} "
                              "(1: unigrams only, 2: unigrams and bigrams)")


def row_features(text: str, max_ngram: int = 2, lowercase: bool = True) -> set[str]:
    """The distinct word n-grams (n = 1..max_ngram) of one text, words joined by single spaces."""
    words = str(text).split()
    if lowercase:
        words = [w.lower() for w in words]
    out: set[str] = set()
    for n in range(1, max_ngram + 1):
        out.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


def z_scores(features: list[set[str]], labels: np.ndarray, num_labels: int) -> tuple[list[str], np.ndarray]:
    """(feature names, z [n_features, num_labels]): the z statistic of every feature with every label.

    ``z[f, y] = (p_hat - p0) / sqrt(p0 (1 - p0) / n_f)``, with ``n_f`` the rows holding feature ``f``,
    ``p_hat`` the share of them labelled ``y`` and ``p0`` the share of all rows labelled ``y``. A label
    with no rows (or every row) has no defined z: its column is nan."""
    labels = np.asarray(labels, dtype=np.int64)
    n_rows = len(labels)
    total: Counter = Counter()
    by_label: list[Counter] = [Counter() for _ in range(num_labels)]
    for feats, y in zip(features, labels):
        total.update(feats)
        by_label[int(y)].update(feats)
    names = sorted(total)
    n = np.array([total[f] for f in names], dtype=np.float64)
    z = np.full((len(names), num_labels), np.nan)
    prior = np.bincount(labels, minlength=num_labels) / max(n_rows, 1)
    for y in range(num_labels):
        p0 = prior[y]
        if not 0.0 < p0 < 1.0:
            continue
        c = np.array([by_label[y][f] for f in names], dtype=np.float64)
        z[:, y] = (c / n - p0) / np.sqrt(p0 * (1.0 - p0) / n)
    return names, z


def flag_outliers(z: np.ndarray, lambda_std: float) -> tuple[np.ndarray, float]:
    """(boolean [n_features, num_labels] of the pairs above the bar, the bar): the bar is
    mean + lambda_std * std over every finite z."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return np.zeros(z.shape, dtype=bool), math.inf
    bar = float(finite.mean() + lambda_std * finite.std())
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(z, nan=-math.inf) > bar, bar


def zdefense_mask(texts: list[str], labels: list[int], num_labels: int, lambda_std: float = 10.0,
                  max_ngram: int = 2, lowercase: bool = True) -> tuple[np.ndarray, dict]:
    """(keep-mask over the rows, statistics): a row is dropped when it holds a feature flagged for its own label."""
    labels = np.asarray(labels, dtype=np.int64)
    feats = [row_features(t, max_ngram, lowercase) for t in texts]
    names, z = z_scores(feats, labels, num_labels)
    flagged, bar = flag_outliers(z, lambda_std)
    flagged_for: dict[str, set[int]] = {}
    for i, y in zip(*np.nonzero(flagged)):
        flagged_for.setdefault(names[i], set()).add(int(y))
    keep = np.array([not any(int(y) in flagged_for.get(f, ()) for f in fs) for fs, y in zip(feats, labels)],
                    dtype=bool)
    index = {f: i for i, f in enumerate(names)}
    top = sorted(((float(z[index[f], y]), f, y) for f, ys in flagged_for.items() for y in ys), reverse=True)
    finite = z[np.isfinite(z)]
    stats = {
        "n_features": len(names),
        "z_mean": float(finite.mean()) if finite.size else None,
        "z_std": float(finite.std()) if finite.size else None,
        "z_threshold": bar if math.isfinite(bar) else None,
        "n_flagged_features": len(top),
        # the strongest flagged features (at most 50), for the record
        "flagged": [{"feature": f, "label": y, "z": round(s, 3)} for s, f, y in top[:50]],
        "rows_removed": int((~keep).sum()),
    }
    return keep, stats


@register("defense", "zdefense")
class ZDefense(Defense):
    """Z-defence: drop training rows holding a unigram/bigram whose z-score with their label is an outlier (>10 std)."""

    Config = ZDefenseConfig

    def select_train(self, rows, ctx: DefenseContext) -> np.ndarray:
        c = self.config
        keep, stats = zdefense_mask(list(rows["text"]), list(rows["label"]), ctx.num_labels, c.lambda_std,
                                    c.max_ngram, c.lowercase)
        if not keep.any():  # every row flagged: nothing sensible to train on, so filter nothing
            stats["fallback"] = "every row carried a flagged feature; kept all rows"
            keep = np.ones(len(keep), dtype=bool)
        ctx.log(**stats)
        return keep
