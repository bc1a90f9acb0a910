"""The README's table of one attack x dataset over seeds: mean ± the 95 % Student-t half-width of CACC and
ASR per defense, the untriggered rate, and Welch's p-value of each defense's ASR against `none` and
against the `clean-only` control (the 384 clean rows alone).

    python3 benchmarks/seed_table.py results/leaderboard sst2 badnets
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.scores import t_interval, welch_p


def fmt(values: np.ndarray) -> str:
    mean, _, lo, hi = t_interval(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * (hi - lo) / 2:.1f}"


def p_text(a: np.ndarray, b: np.ndarray) -> str:
    if len(a) < 2 or len(b) < 2:
        return "-"
    p = welch_p(a, b)
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table(folder: Path, dataset: str, attack: str) -> str:
    df = pd.read_csv(folder / "leaderboard.csv")
    df = df[(df.dataset == dataset) & (df.attack == attack)]
    by = {d: g for d, g in df.groupby("defense")}
    ref_none, ref_clean = by.get("none"), by.get("clean-only")
    rows = []
    for d, g in by.items():
        rows.append((g.asr.mean(), d, g))
    out = ["| defense | seeds | CACC | ASR | untriggered | ASR p vs `none` | ASR p vs `clean-only` |",
           "|---|---|---|---|---|---|---|"]
    for _, d, g in sorted(rows, key=lambda r: (r[0], r[1])):
        seeds = len(g)
        mark = "" if seeds >= 3 else " †"
        pn = p_text(g.asr.to_numpy(), ref_none.asr.to_numpy()) if ref_none is not None and d != "none" else "-"
        pc = (p_text(g.asr.to_numpy(), ref_clean.asr.to_numpy())
              if ref_clean is not None and d != "clean-only" else "-")
        out.append(f"| `{d}` | {seeds}{mark} | {fmt(g.cacc.to_numpy())} | {fmt(g.asr.to_numpy())} | "
                   f"{100 * g.clean_to_target.mean():.1f} | {pn} | {pc} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
