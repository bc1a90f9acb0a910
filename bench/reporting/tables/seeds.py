"""The table (docs/findings.md) of one attack x dataset over seeds: mean ± the 95 % Student-t half-width of CACC
and ASR per defense (the leaderboard's own intervals, `leaderboard_cells.csv`), the untriggered rate,
and Welch's p-value of each defense's ASR against `none` and against the `clean-only` control (the 384
clean rows alone).

    bench table seeds results/leaderboard sst2 badnets
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import read_leaderboard_csv
from ..scores import interval_text as fmt
from ..scores import p_text


def table(folder: Path, dataset: str, attack: str) -> str:
    # the intervals are the leaderboard's own (leaderboard_cells.csv); the p-values need the seeds' rows
    cells = pd.read_csv(folder / "leaderboard_cells.csv")
    cells = cells[(cells.dataset == dataset) & (cells.attack == attack)]
    seeds = read_leaderboard_csv(folder / "leaderboard.csv")
    seeds = seeds[(seeds.dataset == dataset) & (seeds.attack == attack)]
    asr = {d: g.asr.to_numpy() for d, g in seeds.groupby("defense")}
    out = ["| defense | seeds | CACC | ASR | untriggered | ASR p vs `none` | ASR p vs `clean-only` |",
           "|---|---|---|---|---|---|---|"]
    for _, c in cells.sort_values(["asr", "defense"]).iterrows():
        d, n = c.defense, int(c.n_seeds)
        pn = p_text(asr[d], asr["none"]) if "none" in asr and d != "none" else "-"
        pc = p_text(asr[d], asr["clean-only"]) if "clean-only" in asr and d != "clean-only" else "-"
        out.append(f"| `{d}` | {n}{'' if n >= 3 else ' †'} | {fmt(c.cacc, c.cacc_lo, c.cacc_hi, n)} | "
                   f"{fmt(c.asr, c.asr_lo, c.asr_hi, n)} | {100 * c.clean_to_target:.1f} | {pn} | {pc} |")
    return "\n".join(out)
