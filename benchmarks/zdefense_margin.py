"""How far chosen word n-grams sit from Z-defence's bar on one training file (docs/findings.md, the HSOL SynBkd reading):
each feature's z-score with each label and the bar (mean + lambda_std x std of every z),
all from `defenses/zdefense.py`'s own functions at its defaults (the removed rows are not counted here).

    bench export -a syntactic --dataset hsol -s 1 --set profile.train_size=1500 --out /tmp/exp
    python3 benchmarks/zdefense_margin.py /tmp/exp/train-poison.csv , .
"""

from __future__ import annotations

import sys

import numpy as np

from attacks.imported import read_rows
from defenses.zdefense import ZDefenseConfig, flag_outliers, row_features, z_scores


def margins(path: str, features: list[str]) -> list[str]:
    rows, _ = read_rows(path)
    labels = rows["label"].to_numpy()
    cfg = ZDefenseConfig()  # the defense's defaults (lambda_std, max_ngram, lowercase)
    feats = [row_features(t, cfg.max_ngram, cfg.lowercase) for t in rows["text"]]
    names, z = z_scores(feats, labels, int(labels.max()) + 1)
    flagged, bar = flag_outliers(z, cfg.lambda_std)
    index = {f: i for i, f in enumerate(names)}
    out = [f"{path}: {len(labels)} rows, bar {bar:.2f}; flagged: "
           + ", ".join(f"{names[i]!r} (label {y}, z {z[i, y]:.2f})" for i, y in zip(*np.nonzero(flagged)))]
    for f in features:
        if f not in index:
            out.append(f"{f!r}: in no row")
            continue
        out.append(f"{f!r}: " + ", ".join(f"label {y} z {v:.2f} ({v - bar:+.2f} from the bar)"
                                          for y, v in enumerate(z[index[f]])))
    return out


if __name__ == "__main__":
    print("\n".join(margins(sys.argv[1], sys.argv[2:])))
