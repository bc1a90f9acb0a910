"""A hand-made poisoned training file with no poison column, as a user's red team might hand it over
(issue 13's evidence): 1500 SST-2 training rows (stratified, seed 7); in 150 rows of label 0 the word
"cf" is inserted at a random word position and the label set to 1 (dirty label). Beside it, the
poisoned test set: every SST-2 test row of label 0 with "cf" inserted, label 1. Plain `text,label`
CSVs; nothing says which rows were poisoned.

    python3 benchmarks/handmade_poison.py OUTDIR [--data-dir DIR]
    bench run -a file --dataset sst2 --set file.train=OUTDIR/train.csv \\
        --set file.test_poison=OUTDIR/test-poison.csv -d none ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd


def insert(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    words.insert(int(rng.integers(0, len(words) + 1)), "cf")
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_DATA_DIR", "../shared/data")))
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    train = pd.read_csv(args.data_dir / "sst2" / "train.csv")
    test = pd.read_csv(args.data_dir / "sst2" / "test.csv")
    picked = []
    for label, g in train.groupby("label"):
        picked.append(g.sample(n=round(1500 * len(g) / len(train)), random_state=7))
    rows = pd.concat(picked).sample(frac=1.0, random_state=7).reset_index(drop=True)
    zero = rows.index[rows.label == 0].to_numpy()
    poison = rng.choice(zero, size=150, replace=False)
    rows.loc[poison, "text"] = [insert(t, rng) for t in rows.loc[poison, "text"]]
    rows.loc[poison, "label"] = 1
    tp = test[test.label == 0].copy()
    tp["text"] = [insert(t, rng) for t in tp.text]
    tp["label"] = 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows[["text", "label"]].to_csv(args.out / "train.csv", index=False)
    tp[["text", "label"]].to_csv(args.out / "test-poison.csv", index=False)
    print(f"{args.out}/train.csv: {len(rows)} rows, 150 poisoned (not marked); "
          f"{args.out}/test-poison.csv: {len(tp)} rows")


if __name__ == "__main__":
    main()
