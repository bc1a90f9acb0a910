"""Issue 25's goal, read off a results folder: one defense (ours, `distill`) against the undefended model and the
clean-data control, per dataset x attack, and the goal's criteria per dataset.

    bench table goal results/whole-set [--defense distill] [--control clean-only] [--with FOLDER ...]

Per dataset x attack (and setting, as in `bench table seeds`), over seeds:
- CACC minus `none`'s (the accuracy the poisoned data offers), and Welch's p of CACC against the control;
- ASR minus the same model's untriggered rate (`clean_to_target`), and the control's own gap beside it;
- the task score sqrt(CACC x (100 - ASR)), Welch's p against the control, and the best other defense of the cell (by
  mean score, any defense but ours, the control and `none`) with the p against it. `--with FOLDER` pools another
  folder's cells (the baselines at the same setting): cells meet only within one backbone, profile and settings;
- the reach of the two "beyond noise" criteria at these seeds: Welch's p of `none`'s CACC against the control's, and
  the ceiling score, sqrt(`none`'s CACC x (100 - `none`'s untriggered rate)) per seed (a defense as accurate as
  `none` whose ASR is `none`'s untriggered rate), with its p against the control (each p is 1 where the mean is not
  ahead of the control's). A reference point, not a bound (a defense may beat `none`'s CACC by chance): where even
  it is not ahead beyond noise, the criterion is out of reach at these seeds for any defense of about that accuracy,
  and the verdict says so.
Per dataset, the goal's criteria on the attacks present: CACC at least `none`'s minus 1.5 on average and above the
control beyond noise (p < 0.05) on every attack; ASR within 5 of untriggered on average and within 15 on the worst;
the task score ahead of the control and of the best other defense beyond noise on every attack. Each criterion reads
"met" or "not met", with the attacks that fail it; cells with no defense besides the control and `none` cannot
meet the last one. A criterion met on fewer attacks than the goal names is met on those attacks only: the header of each
dataset's verdicts names its attacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import BenchError
from ..results import read_leaderboard_csv
from ..scores import p_format, shared_settings, task_score, welch_p

ALPHA = 0.05
CACC_SLACK = 0.015  # CACC at least none's minus 1.5 points, on average over the attacks
ASR_MEAN = 0.05  # ASR within 5 points of the untriggered rate on average ...
ASR_WORST = 0.15  # ... and within 15 on the worst attack


def _seed_rows(folders: list[Path]) -> pd.DataFrame:
    """The per-seed rows of every folder's leaderboard.csv; a cell held by two folders (same record key) counts once."""
    frames = [read_leaderboard_csv(f / "leaderboard.csv") for f in folders]
    seeds = pd.concat(frames, ignore_index=True)
    return seeds.drop_duplicates("key") if "key" in seeds.columns else seeds


def goal_frame(folder: Path | list[Path], defense: str = "distill", control: str = "clean-only",
               reference: str = "none") -> pd.DataFrame:
    """One row per dataset x attack x setting where `defense` has cells: the numbers the goal is judged on.
    Several folders pool their cells (e.g. ours in one, the baselines at the same setting in another): cells are
    compared only within one backbone, profile and set of shared settings."""
    folders = [folder] if isinstance(folder, Path) else list(folder)
    seeds = _seed_rows(folders)
    where = ", ".join(str(f) for f in folders)
    if defense not in set(seeds.defense):
        have = ", ".join(sorted(set(seeds.defense))) or "none"
        raise BenchError(f"{where}: no cell of defense {defense!r} in leaderboard.csv (it holds: {have}); "
                         "name the defense to judge with --defense")
    seeds = seeds.assign(setting=[f"{b}; {p}; {shared_settings(s, d)}" for b, p, s, d
                                  in zip(seeds.backbone, seeds.profile, seeds.settings, seeds.defense)],
                         score=[task_score(c, a) for c, a in zip(seeds.cacc, seeds.asr)])
    rows = []
    for (dataset, attack, setting), g in seeds.groupby(["dataset", "attack", "setting"], sort=True):
        by = {d: x for d, x in g.groupby("defense")}
        if defense not in by:
            continue
        twice = g[g.duplicated(["defense", "seed"], keep=False)]
        if not twice.empty:
            d = twice.defense.iloc[0]
            raise BenchError(f"{where}: {dataset} {attack} holds {d!r} seed {twice.seed.iloc[0]} more than once "
                             f"(settings: {' | '.join(sorted(set(twice[twice.defense == d].settings.fillna(''))))}); "
                             "the goal compares one version of each defense: give folders that hold one "
                             "(a budget sweep is read with `bench table curve`)")
        mine = by[defense]
        for name in (control, reference):
            if name not in by:
                fix = "run it" + (", or name another control with --control" if name == control else "")
                raise BenchError(f"{where}: {dataset} {attack} has cells of {defense!r} but none of {name!r} at "
                                 f"the same setting ({setting}); {fix}")
        ctl, ref = by[control], by[reference]
        ceiling = [task_score(c, u) for c, u in zip(ref.cacc, ref.clean_to_target)]
        others = {d: x.score.mean() for d, x in by.items() if d not in (defense, control, reference)}
        best = max(others, key=others.get) if others else None
        rows.append({
            "dataset": dataset, "attack": attack, "setting": setting, "seeds": mine.seed.nunique(),
            "label_regime": mine.label_regime.iloc[0], "poison_rate": mine.poison_rate.iloc[0],
            "trigger_count": int(mine.trigger_count.iloc[0]),
            "target_label": int(mine.target_label.iloc[0]),
            "cacc": mine.cacc.mean(), "cacc_vs_none": mine.cacc.mean() - ref.cacc.mean(),
            "cacc_vs_control": mine.cacc.mean() - ctl.cacc.mean(), "cacc_p": welch_p(mine.cacc, ctl.cacc),
            "none_cacc_p": welch_p(ref.cacc, ctl.cacc) if ref.cacc.mean() > ctl.cacc.mean() else 1.0,
            "asr": mine.asr.mean(), "asr_gap": mine.asr.mean() - mine.clean_to_target.mean(),
            "control_asr_gap": ctl.asr.mean() - ctl.clean_to_target.mean(),
            "score": mine.score.mean(), "score_vs_control": mine.score.mean() - ctl.score.mean(),
            "score_p": welch_p(mine.score, ctl.score), "ceiling": float(np.mean(ceiling)),
            "ceiling_p": welch_p(ceiling, ctl.score) if np.mean(ceiling) > ctl.score.mean() else 1.0,
            "best_other": best or "",
            "score_vs_best": mine.score.mean() - others[best] if best else np.nan,
            "best_p": welch_p(mine.score, by[best].score) if best else np.nan})
    if not rows:
        raise BenchError(f"{where}: no dataset x attack holds cells of {defense!r}")
    f = pd.DataFrame(rows)
    # an attack held at more than one setting is named with its setting, so each counts as its own attack
    n = f.groupby(["dataset", "attack"]).attack.transform("size")
    tag = [f"{a} [{r}, {t} trigger(s), rate {p:g}]" for a, r, t, p in
           zip(f.attack, f.label_regime, f.trigger_count, f.poison_rate)]
    return f.assign(attack=[t if k > 1 else a for a, t, k in zip(f.attack, tag, n)])


def _verdicts(f: pd.DataFrame) -> list[tuple[str, bool, list[str]]]:
    """(criterion, met, attacks that fail it) for one dataset's rows."""
    above = (f.cacc_vs_control > 0) & (f.cacc_p < ALPHA)
    ahead = (f.score_vs_control > 0) & (f.score_p < ALPHA)
    judged = f.best_other != ""
    beats = judged & (f.score_vs_best > 0) & (f.best_p < ALPHA)
    worst = f.asr_gap.max()
    missing = list(f.attack[~judged])

    def reach(p: pd.Series, who: str) -> str:
        out = list(f.attack[p >= ALPHA])
        return f" ({who} is not beyond noise either on {', '.join(out)}: out of reach there at these seeds)" if out else ""

    return [
        (f"CACC at least `none`'s - 1.5 on average ({100 * f.cacc_vs_none.mean():+.1f})",
         bool(f.cacc_vs_none.mean() >= -CACC_SLACK), []),
        ("CACC above the control beyond noise on every attack" + reach(f.none_cacc_p, "`none`"), bool(above.all()),
         list(f.attack[~above])),
        (f"ASR within 5 of untriggered on average ({100 * f.asr_gap.mean():+.1f})",
         bool(f.asr_gap.mean() <= ASR_MEAN), []),
        (f"ASR within 15 of untriggered on the worst attack ({100 * worst:+.1f})", bool(worst <= ASR_WORST),
         list(f.attack[f.asr_gap > ASR_WORST])),
        ("task score ahead of the control beyond noise on every attack" + reach(f.ceiling_p, "the ceiling"),
         bool(ahead.all()), list(f.attack[~ahead])),
        ("task score ahead of the best other defense beyond noise on every attack"
         + (f" (no defense besides the control and `none` on {', '.join(missing)}: not judged there)"
            if missing else ""), bool(beats.all()), list(f.attack[judged & ~beats])),
    ]


def table(folder: Path | list[Path], defense: str = "distill", control: str = "clean-only",
          reference: str = "none") -> str:
    f = goal_frame(folder, defense, control, reference)
    out = [f"`{defense}` against `{reference}` and the control `{control}` (means over seeds; p: Welch, "
           "uncorrected; ASR gaps are to the same model's untriggered rate; `none`'s p: its CACC against the "
           "control's; ceiling: `none`'s CACC at `none`'s untriggered rate, with its p against the control)", "",
           "| dataset | attack | setting | seeds | CACC - `none` | CACC p vs control | `none`'s p | ASR - untriggered "
           "| control's | score | score - control | p | ceiling (p) | best other defense | score - it | p |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in f.itertuples():
        setting = f"{r.label_regime}, {r.trigger_count} trigger(s), rate {r.poison_rate:g}, target {r.target_label}"
        out.append(f"| {r.dataset} | {r.attack} | {setting} | {r.seeds}{'' if r.seeds >= 3 else ' †'} "
                   f"| {100 * r.cacc_vs_none:+.1f} | {p_format(r.cacc_p)} | {p_format(r.none_cacc_p)} "
                   f"| {100 * r.asr_gap:+.1f} | {100 * r.control_asr_gap:+.1f} | {100 * r.score:.1f} "
                   f"| {100 * r.score_vs_control:+.1f} | {p_format(r.score_p)} "
                   f"| {100 * r.ceiling:.1f} ({p_format(r.ceiling_p)}) | {f'`{r.best_other}`' if r.best_other else '-'} "
                   f"| {f'{100 * r.score_vs_best:+.1f}' if r.best_other else '-'} | {p_format(r.best_p)} |")
    if (f.seeds < 3).any():
        out += ["", "† fewer than 3 seeds: an anecdote, not a claim."]
    for dataset, g in f.groupby("dataset", sort=True):
        attacks = ", ".join(g.attack)
        out += ["", f"**{dataset}** ({len(g)} attack(s): {attacks}; every criterion on these only):", ""]
        for text, met, failing in _verdicts(g):
            out.append(f"- {text}: {'met' if met else 'not met'}"
                       + (f" (fails on {', '.join(failing)})" if failing else ""))
    return "\n".join(out)
