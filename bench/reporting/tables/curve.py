"""The defender-knowledge curve (issue 25): CACC and ASR of each defense against the number of clean rows
it used (`n_clean_used` of its records), per attack, mean ± the 95 % Student-t half-width over seeds.

    bench table curve results/knowledge-curve sst2 [--plot curve-sst2.png]

A budget is whatever the records say the defense used: `clean-only.n_clean`, `none+clean.n_clean`,
`distill.n_clean` or `musclelora.reference_size` swept at one fixed `profile.clean_size`
(benchmarks/gpu/gpu_knowledge.sh), so every point of a curve chose its model on the same clean dev rows.
`none` uses no clean row and is drawn as a flat reference line. A folder whose cells of an attack differ in
a setting other than the defenses' own (their budget knobs) gets one block per setting, as in
`bench table seeds`: points are only ever joined within one setting.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from ...errors import BenchError
from ..results import read_leaderboard_csv
from ..scores import interval_text, shared_settings, t_interval


def curve_frame(folder: Path, dataset: str) -> pd.DataFrame:
    """One row per (setting, attack, defense, budget): seeds, and mean / low / high of CACC and ASR."""
    seeds = read_leaderboard_csv(folder / "leaderboard.csv")
    seeds = seeds[seeds.dataset == dataset]
    if seeds.empty:
        have = ", ".join(sorted(set(read_leaderboard_csv(folder / "leaderboard.csv").dataset))) or "none"
        raise BenchError(f"{folder}: no cell of dataset {dataset!r} in leaderboard.csv (it holds: {have})")
    if "n_clean_used" not in seeds.columns:
        raise BenchError(f"{folder}/leaderboard.csv has no n_clean_used column; rebuild it with "
                         f"`bench leaderboard --out {folder}`")
    seeds = seeds.assign(
        setting=[f"{b}; {shared_settings(s, d)}" for b, s, d in zip(seeds.backbone, seeds.settings, seeds.defense)],
        budget=pd.to_numeric(seeds.n_clean_used, errors="coerce").fillna(0).astype(int))
    rows = []
    for (setting, attack, defense, budget), g in seeds.groupby(["setting", "attack", "defense", "budget"], sort=True):
        row = {"setting": setting, "attack": attack, "defense": defense, "budget": budget,
               "n_seeds": g.seed.nunique(), "seeds": ",".join(str(s) for s in sorted(g.seed.unique()))}
        for m in ("cacc", "asr", "clean_to_target"):
            mean, _, lo, hi = t_interval(pd.to_numeric(g[m], errors="coerce").to_numpy())
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def table(folder: Path, dataset: str) -> str:
    frame = curve_frame(folder, dataset)
    settings = sorted(frame.setting.unique())
    out: list[str] = []
    for setting in settings:
        block = frame[frame.setting == setting]
        if len(settings) > 1:
            out += [f"setting: {setting}", ""]
        budgets = sorted(block.budget.unique())
        out += ["| attack | defense | " + " | ".join(f"{b} rows" for b in budgets) + " |",
                "|---|---|" + "---|" * len(budgets)]
        for (attack, defense), g in block.groupby(["attack", "defense"], sort=True):
            by = {int(r.budget): r for r in g.itertuples()}
            cells = []
            for b in budgets:
                r = by.get(int(b))
                cells.append("" if r is None else f"{interval_text(r.cacc, r.cacc_lo, r.cacc_hi, r.n_seeds)} / "
                             f"{interval_text(r.asr, r.asr_lo, r.asr_hi, r.n_seeds)} ({r.n_seeds})")
            out.append(f"| {attack} | `{defense}` | " + " | ".join(cells) + " |")
        out.append("")
    out.append("CACC / ASR in %, mean ± 95 % half-width over seeds (seed count in brackets); columns: clean rows used.")
    return "\n".join(out)


def plot(folder: Path, dataset: str, path: Path) -> Path:
    """One figure: a column per attack, CACC (top) and ASR (bottom) against the clean budget (log scale),
    one line per defense with its interval as a band; `none` as a dashed flat line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = curve_frame(folder, dataset)
    settings = sorted(frame.setting.unique())
    if len(settings) > 1:
        raise BenchError(f"{folder}: {dataset} holds {len(settings)} settings ({'; '.join(settings)}); the plot joins "
                         "points of one setting only: give a folder with one (the table shows each)")
    attacks = sorted(frame.attack.unique())
    fig, axes = plt.subplots(2, len(attacks), figsize=(max(6, 4 * len(attacks)), 6.5), squeeze=False, sharex=True)
    budgets = sorted(b for b in frame.budget.unique() if b > 0) or [1]
    for j, attack in enumerate(attacks):
        sub = frame[frame.attack == attack]
        for i, metric in enumerate(("cacc", "asr")):
            ax = axes[i][j]
            for defense, g in sub.groupby("defense", sort=True):
                g = g.sort_values("budget")
                if (g.budget == 0).all():
                    ax.axhline(100 * g[metric].iloc[0], ls="--", color="grey", label=defense)
                    continue
                g = g[g.budget > 0]
                (line,) = ax.plot(g.budget, 100 * g[metric], marker="o", label=defense)
                ax.fill_between(g.budget, 100 * g[f"{metric}_lo"], 100 * g[f"{metric}_hi"], alpha=0.15,
                                color=line.get_color())
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(budgets, [str(b) for b in budgets])
            if metric == "asr":
                ax.set_ylim(-2, 102)
            ax.set_ylabel(f"{metric.upper()} %")
            if i == 0:
                ax.set_title(attack)
            if i == 1:
                ax.set_xlabel("clean rows used")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(f"{dataset}: clean budget; {settings[0]}", 90)), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
