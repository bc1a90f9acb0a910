"""A dataset x attack by defense table (CACC / ASR, and FRR where a defense rejects) from a
leaderboard CSV, as docs/findings.md shows it.

    bench table defenses results/baselines-inference/leaderboard.csv
"""

from __future__ import annotations

import pandas as pd


def cell_text(r: pd.Series) -> str:
    text = f"{100 * r.cacc:.1f} / {100 * r.asr:.1f}"
    if r.get("frr", 0) and r.frr > 0:
        text += f" (FRR {100 * r.frr:.1f}, rej {100 * r.poison_rejected:.1f})"
    return text


def table(df: pd.DataFrame) -> str:
    df = df.copy()
    df["slice"] = df["settings"].astype(object).fillna("").astype(str).str.extract(r"profile\.test_size=(\d+)", expand=False).fillna("full")
    out = []
    for sl, part in df.groupby("slice", sort=False):
        defenses = sorted(part.defense.unique(), key=lambda d: (d != "none", d))
        head = "| dataset | attack | regime, rate | n test clean / poison | " + " | ".join(f"`{d}`" for d in defenses) + " |"
        out += [f"Test rows: {sl if sl == 'full' else 'stratified slice of ' + sl}", "", head,
                "|" + "---|" * (4 + len(defenses))]
        for (ds, atk), g in part.groupby(["dataset", "attack"], sort=True):
            first = g.iloc[0]
            cells = {r.defense: cell_text(r) for _, r in g.iterrows()}
            out.append(f"| {ds} | {atk} | {first.label_regime}, {first.poison_rate} | "
                       f"{int(first.n_test_clean)} / {int(first.n_test_poison)} | "
                       + " | ".join(cells.get(d, "-") for d in defenses) + " |")
        out.append("")
    return "\n".join(out)
