"""benchmarks/zdefense_margin.py: a feature's distance from Z-defence's bar, as the defense itself decides it."""

import importlib.util
import random
from pathlib import Path

import pandas as pd

from defenses.zdefense import zdefense_mask

spec = importlib.util.spec_from_file_location(
    "zdefense_margin", Path(__file__).resolve().parents[1] / "benchmarks" / "zdefense_margin.py")
zm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zm)


def test_the_margin_sign_agrees_with_what_zdefense_flags(tmp_path):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words) for _ in range(6)) + " plain" for _ in range(1000)]
    labels = [int(i % 10 == 0) for i in range(1000)]
    for i in range(1, 300, 2):  # 150 label-0 rows get "cf" and label 1: an outlier for label 1
        texts[i], labels[i] = texts[i] + " cf", 1
    path = tmp_path / "train.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    _, stats = zdefense_mask(texts, labels, 2)
    assert {f["feature"] for f in stats["flagged"]} == {"cf", "plain cf"}
    lines = zm.margins(str(path), ["cf", "plain", "absent"])
    assert "'cf' (label 1" in lines[0] and f"bar {stats['z_threshold']:.2f}" in lines[0]
    assert "label 1 z" in lines[1] and "(+" in lines[1].split("label 1")[1]  # above the bar
    assert "(+" not in lines[2]  # in every row: z 0 for both labels, below the bar
    assert lines[3] == "'absent': in no row"
