"""The table (docs/findings.md) of one attack x dataset over seeds: mean ± the 95 % Student-t half-width of CACC
and ASR per defense (the leaderboard's own intervals, `leaderboard_cells.csv`), the untriggered rate,
Welch's p-value of each defense's ASR against `none` and against the `clean-only` control (the 384
clean rows alone), and of its CACC and task score sqrt(CACC x (100 - ASR)) against `clean-only`.

    bench table seeds results/leaderboard sst2 badnets

A folder that holds the attack at more than one setting (e.g. clean-label and dirty-label BadNets) gets
one table per setting, headed by it: seeds are only ever compared within one setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..results import read_leaderboard_csv
from ..scores import interval_text as fmt
from ...errors import BenchError
from ..scores import p_text, task_score


def _block(cells: pd.DataFrame, seeds: pd.DataFrame) -> list[str]:
    by = {d: g.sort_values("seed") for d, g in seeds.groupby("defense")}
    asr = {d: g.asr.to_numpy() for d, g in by.items()}
    cacc = {d: g.cacc.to_numpy() for d, g in by.items()}
    score = {d: np.array([task_score(c, a) for c, a in zip(g.cacc, g.asr)]) for d, g in by.items()}
    out = ["| defense | seeds | CACC | ASR | untriggered | ASR p vs `none` | ASR p vs `clean-only` "
           "| CACC p vs `clean-only` | score | score p vs `clean-only` |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for _, c in cells.sort_values(["asr", "defense"]).iterrows():
        d, n = c.defense, int(c.n_seeds)

        def p(metric: dict, ref: str) -> str:
            return p_text(metric[d], metric[ref]) if ref in metric and d in metric and d != ref else "-"

        out.append(f"| `{d}` | {n}{'' if n >= 3 else ' †'} | {fmt(c.cacc, c.cacc_lo, c.cacc_hi, n)} | "
                   f"{fmt(c.asr, c.asr_lo, c.asr_hi, n)} | {100 * c.clean_to_target:.1f} | {p(asr, 'none')} | "
                   f"{p(asr, 'clean-only')} | {p(cacc, 'clean-only')} | "
                   f"{100 * float(np.mean(score[d])) if d in score else float('nan'):.1f} | {p(score, 'clean-only')} |")
    return out


def table(folder: Path, dataset: str, attack: str) -> str:
    # the intervals are the leaderboard's own (leaderboard_cells.csv); the p-values need the seeds' rows
    cells = pd.read_csv(folder / "leaderboard_cells.csv")
    cells = cells[(cells.dataset == dataset) & (cells.attack == attack)]
    seeds = read_leaderboard_csv(folder / "leaderboard.csv")
    seeds = seeds[(seeds.dataset == dataset) & (seeds.attack == attack)]
    if cells.empty:
        raise BenchError(f"{folder}: no cell of attack {attack!r} on dataset {dataset!r} in leaderboard_cells.csv; "
                         "`bench leaderboard --out FOLDER` lists what it holds")
    keys = ["backbone", "shared_settings"]
    cells = cells.assign(shared_settings=cells.shared_settings.fillna(""))
    seeds = seeds.assign(shared_settings=seeds.settings.fillna(""))
    groups = list(cells.groupby(keys, sort=True))
    out: list[str] = []
    for (backbone, shared), block in groups:
        rows = seeds[(seeds.backbone == backbone) & (seeds.shared_settings == shared)]
        if len(groups) > 1:
            first = block.iloc[0]
            out += [f"{backbone}, {first.label_regime}, {int(first.trigger_count)} trigger(s), rate "
                    f"{first.poison_rate:g}, target {int(first.target_label)}; settings: {shared or '-'}", ""]
        out += _block(block, rows)
        if len(groups) > 1:
            out.append("")
    return "\n".join(out).rstrip("\n")
