"""The adaptive attack aimed at distill v2 (attacks/adaptive.py) picks the rows it says it picks."""

import datasets
import numpy as np

from bench.data import TextDataset
from attacks.adaptive import AdaptiveConfig, BadNetsAdaptive, proxy_target_scores


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    pos, neg = ["great", "wonderful", "superb", "lovely"], ["awful", "boring", "dull", "bad"]
    texts, labels = [], []
    for i in range(n):
        y = int(i % 2)
        words = list(rng.choice(pos if y else neg, 3))
        if i % 10 == 1:  # every fifth positive row reads negative: the "hard" target rows
            words = list(rng.choice(neg, 3))
        texts.append(f"row {i} " + " ".join(words))
        labels.append(y)
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return texts, np.array(labels), ds


def test_the_proxy_scores_hard_target_rows_low_out_of_fold():
    texts, labels, _ = _data()
    score = proxy_target_scores(texts, labels, 1, 5, 0)
    hard = np.array([i % 10 == 1 for i in range(len(texts))])
    easy_pos = (labels == 1) & ~hard
    assert score[hard].mean() < score[easy_pos].mean() - 0.2


def test_clean_label_poisons_the_hardest_target_rows_and_dirty_the_most_target_like():
    texts, labels, ds = _data()
    data = TextDataset("toy", ds, ds, ds, num_labels=2, default_target=1, fingerprint="toy")
    out = BadNetsAdaptive(AdaptiveConfig(poison_rate=0.1)).poison(data, 1)  # 20 rows: the 20 hard ones
    chosen = np.flatnonzero(np.array(out.train["poisoned"]))
    assert set(chosen) == {i for i in range(len(texts)) if i % 10 == 1}
    # dirty: non-target rows the proxy finds most target-like; a random pick would score lower on average
    out_d = BadNetsAdaptive(AdaptiveConfig(poison_rate=0.1, label_regime="dirty")).poison(data, 1)
    chosen_d = np.flatnonzero(np.array(out_d.train["poisoned"]))
    score = proxy_target_scores(texts, labels, 1, 5, 0)
    assert (labels[chosen_d] == 0).all()
    assert score[chosen_d].mean() > score[labels == 0].mean()
