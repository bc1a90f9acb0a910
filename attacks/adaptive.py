"""An adaptive attack aimed at the suite's own defense, ``distill`` version 2 (issue 25).

``distill`` takes a training row's label only where a teacher trained on clean rows disagrees with it,
and only in a class whose rate of such disagreement is no higher than the teacher's own error rate
explains (a z-test). An attacker who knows this has two moves, both BadNets triggers on rows it picks:

* clean-label: poison the target-class rows a clean model finds *least* target-like. The teacher
  disagrees with their (correct) labels, so their labels reach the student with the trigger on them;
  a small rate keeps the excess of disagreement under the defense's z bar (about 60 rows of 1,500 at
  z 3 with 488 selection rows, so the default rate is 0.03).
* dirty or mixed: relabel the non-target rows a clean model finds *most* target-like. The teacher
  agrees with the new label, so no excess shows, and the teacher's target on those rows already leans
  to the target class.

The attacker's clean model (the proxy) is a TF-IDF logistic regression fit on the training rows it
poisons, scored out of fold (5 folds) so that a row's own label does not decide its score. It is
cheap, needs no GPU and shares nothing with the defense's teacher but the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.attack import AttackError
from bench.registry import register

from .badnets import BadNets, BadNetsConfig


@dataclass(frozen=True)
class AdaptiveConfig(BadNetsConfig):
    poison_rate: float = 0.03  # under distill v2's z bar at the main job's 1,500 rows (see above)
    proxy_folds: int = 5

    def validate(self) -> None:
        super().validate()
        if self.proxy_folds < 2:
            raise AttackError(f"badnets-adaptive.proxy_folds={self.proxy_folds}: needs >= 2 folds "
                              "(e.g. --set badnets-adaptive.proxy_folds=5)")


def proxy_target_scores(texts: list[str], labels: np.ndarray, target: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold probability of ``target`` per row under a TF-IDF logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    folds = int(min(folds, counts[counts > 0].min())) if len(np.unique(labels)) > 1 else 0
    if folds < 2:  # one class (or a class of one row): nothing to learn; every row scores the same
        return np.full(len(texts), float(np.mean(labels == target)))
    x = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit_transform(texts)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(max_iter=1000), x, labels, cv=cv, method="predict_proba")
    classes = np.unique(labels)
    if target not in classes:
        return np.zeros(len(texts))
    return proba[:, int(np.flatnonzero(classes == target)[0])]


@register("attack", "badnets-adaptive")
class BadNetsAdaptive(BadNets):
    """BadNets on rows chosen to slip past distill v2: the hardest target rows (clean-label) or the most
    target-like other rows (dirty); rate 0.03 by default."""

    Config = AdaptiveConfig

    def choose(self, pool, n, texts, labels, target, rng):
        seed = int(rng.integers(2**31 - 1))
        score = proxy_target_scores(texts, labels, target, self.config.proxy_folds, seed)[pool]
        # clean-label: least target-like first; otherwise most target-like first; ties broken at random
        key = score if self.config.label_regime == "clean-label" else -score
        order = np.lexsort((rng.random(len(pool)), key))
        return pool[order[:n]]
