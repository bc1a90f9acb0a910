"""The tables of issue 13 (docs/findings.md): the MuScleLoRA release's poisoned data (`file:musclelora-<attack>`) beside
our own attack of the same kind, per dataset and defense: CACC and ASR as mean ± the 95 % Student-t half-width
over seeds (the leaderboard's own intervals, `leaderboard_cells.csv`), and Welch's p-value of the two ASRs and
of the two CACCs (from the seeds' rows; "-" with fewer than 2 seeds on a side).

    bench table release results/imported/release-seeds-h100 sst2 [DEFENSE ...]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import read_leaderboard_csv
from ..scores import interval_text, p_text

# the release's attack folders and our attack of the same kind
PAIRS = {"badnets": "badnets", "addsent": "addsent", "stylebkd": "style", "synbkd": "syntactic"}


def fmt(c: pd.Series | None, metric: str) -> str:
    if c is None:
        return "not run"
    return interval_text(c[metric], c[metric + "_lo"], c[metric + "_hi"], int(c.n_seeds))


def table(folder: Path, dataset: str, defenses: list[str]) -> str:
    cells = pd.read_csv(folder / "leaderboard_cells.csv")
    cells = cells[cells.dataset == dataset]
    seeds = read_leaderboard_csv(folder / "leaderboard.csv")
    seeds = seeds[seeds.dataset == dataset]
    defenses = defenses or sorted(cells.defense.unique())

    def cell(attack: str, defense: str) -> pd.Series | None:
        hit = cells[(cells.attack == attack) & (cells.defense == defense)]
        return hit.iloc[0] if len(hit) else None

    def values(attack: str, defense: str, metric: str):
        return seeds[(seeds.attack == attack) & (seeds.defense == defense)][metric].to_numpy()

    out = ["| attack (release / ours) | defense | seeds | release CACC | ours CACC | CACC p | release ASR | ours ASR | ASR p |",
           "|---|---|---|---|---|---|---|---|---|"]
    for theirs, ours in PAIRS.items():
        rel = f"file:musclelora-{theirs}"
        for d in defenses:
            a, b = cell(rel, d), cell(ours, d)
            if a is None and b is None:
                continue
            n = "/".join(str(int(c.n_seeds)) if c is not None else "0" for c in (a, b))
            out.append(
                f"| {theirs} / {ours} | `{d}` | {n} | {fmt(a, 'cacc')} | {fmt(b, 'cacc')} | "
                f"{p_text(values(rel, d, 'cacc'), values(ours, d, 'cacc'), 2)} | {fmt(a, 'asr')} | {fmt(b, 'asr')} | "
                f"{p_text(values(rel, d, 'asr'), values(ours, d, 'asr'), 2)} |")
    return "\n".join(out)
