"""The defender-knowledge curve (issue 25): CACC and ASR of each defense against the number of clean rows
it used (`n_clean_used` of its records), per attack, mean ± the 95 % Student-t half-width over seeds.

    bench table curve results/knowledge-curve sst2 [--plot curve-sst2.png]

A budget is whatever the records say the defense used: `clean-only.n_clean`, `none+clean.n_clean`,
`distill.n_clean` or `musclelora.reference_size` swept at one fixed `profile.clean_size`
(benchmarks/gpu/gpu_knowledge.sh), so every point of a curve chose its model on the same clean dev rows.
`none` uses no clean row and is drawn as a flat reference line. A folder whose cells of an attack differ in
a setting other than the defenses' own (their budget knobs) gets one block per setting, as in
`bench table seeds`: points are only ever joined within one setting.

`--against DEFENSE` adds, per budget, each defense beside that one at the same budget (the control the issue
asks every method to beat, `clean-only`): the differences of mean CACC, ASR and task score
sqrt(CACC x (100 - ASR)) with Welch's p over seeds, and the CACC gap to `none` (no clean row) with its p.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import BenchError
from ..results import read_leaderboard_csv
from ..scores import interval_text, p_text, shared_settings, t_interval, task_score


def seed_rows(folder: Path, dataset: str) -> pd.DataFrame:
    """The dataset's per-seed leaderboard rows with their `setting` (backbone and shared settings) and `budget`."""
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
    return seeds


def curve_frame(folder: Path, dataset: str) -> pd.DataFrame:
    """One row per (setting, attack, defense, budget): seeds, and mean / low / high of CACC and ASR."""
    seeds = seed_rows(folder, dataset)
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


def compare(folder: Path, dataset: str, against: str) -> str:
    """Per setting, attack and budget: each defense minus `against` at the same budget (CACC, ASR, task score,
    points, with Welch p), and its CACC minus `none`'s. A p needs 2 seeds a side; "-" where it has fewer."""
    seeds = seed_rows(folder, dataset)
    if against not in set(seeds.defense):
        raise BenchError(f"{folder}: no cell of defense {against!r} on {dataset} to compare against "
                         f"(it holds: {', '.join(sorted(set(seeds.defense)))})")
    seeds = seeds.assign(score=[task_score(c, a) for c, a in zip(seeds.cacc, seeds.asr)])
    out: list[str] = []
    settings = sorted(seeds.setting.unique())
    for setting in settings:
        block = seeds[seeds.setting == setting]
        if len(settings) > 1:
            out += [f"setting: {setting}", ""]
        head = (f"| attack | budget | defense | seeds | CACC - `{against}` | p | ASR - `{against}` | p "
                f"| score - `{against}` | p | CACC - `none` | p |")
        out += [head, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for attack, by_attack in block.groupby("attack", sort=True):
            none = by_attack[by_attack.defense == "none"]
            for budget, g in by_attack[by_attack.budget > 0].groupby("budget", sort=True):
                ref = g[g.defense == against]
                if ref.empty:
                    continue
                for defense, d in g[g.defense != against].groupby("defense", sort=True):
                    cells = []
                    for m, base in (("cacc", ref), ("asr", ref), ("score", ref), ("cacc", none)):
                        if base.empty:
                            cells += ["", ""]
                            continue
                        a, b = d[m].to_numpy(dtype=float), base[m].to_numpy(dtype=float)
                        cells += [f"{100 * (np.nanmean(a) - np.nanmean(b)):+.1f}", p_text(a, b)]
                    lead = f"| {attack} | {int(budget)} | `{defense}` | {d.seed.nunique()} | "
                    out.append(lead + " | ".join(cells) + " |")
        out.append("")
    out.append(f"Differences of means over seeds in points; p: Welch's two-sided p over seeds; score: "
               f"sqrt(CACC x (100 - ASR)). Each defense against `{against}` at the same clean budget.")
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
