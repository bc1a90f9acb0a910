"""Seeds aggregated with intervals, and the per-defense scores of the field.

Everything here is derived from the per-seed leaderboard frame (``results.records_frame``), never
from anything a defense saw. Rates are fractions (0..1) as in the records.

Per cell (a dataset x backbone x attack x defense x setting, over its seeds): mean, standard
deviation and a 95 % Student-t interval of CACC and ASR, and

- ``excess_asr`` = ASR - clean_to_target: how far the trigger moves the non-target rows to the target
  beyond what the model does with them untriggered (a weak model's bias is not a backdoor);
- ``task_score`` = sqrt(CACC x (1 - ASR)), the Anti-BAD challenge's per-task score (0..1, higher is
  better; scaled by 100 in the tables);
- ``der``, BackdoorBench's defense effectiveness rating against the undefended model (``none``) of the
  same attack, dataset, backbone and settings: DER = [max(0, dASR) - max(0, dCACC) + 1] / 2 with
  dASR = ASR(none) - ASR(defense) (the backdoor removed) and dCACC = CACC(none) - CACC(defense) (the
  clean accuracy lost), as their paper defines it: losing clean accuracy *lowers* the rating (their
  code adds it; not copied). 0.5 = no change, 1 = backdoor gone at no cost.

Per defense (``summary``): the means of those over the cells it ran, its mean rank among the
defenses of each cell (by task score, 1 = best), and its worst attack (highest ASR).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# what makes two rows the same cell apart from the seed
CELL = ["dataset", "backbone", "attack", "defense", "poison_rate", "label_regime", "target_label", "profile",
        "settings"]
# what makes cells comparable across defenses: the cell without the defense and its own settings
CONTEXT = ["dataset", "backbone", "attack", "poison_rate", "label_regime", "target_label", "profile",
           "shared_settings"]
CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer seeds than this: the cell is marked in every table


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of a Student-t interval for the mean; one value gives std nan and
    an interval of zero width (nothing to estimate noise from)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return (math.nan,) * 4
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, mean, mean
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def shared_settings(settings: object, defense: str) -> str:
    """The settings of a cell without the defense's own (``lora.r=16; profile.epochs=1`` ->
    ``profile.epochs=1`` for lora): what a defense's row must share with its ``none`` baseline."""
    if not isinstance(settings, str) or not settings:
        return ""
    parts = [p.strip() for p in settings.split(";") if p.strip()]
    return "; ".join(p for p in parts if not p.startswith(f"{defense}."))


def task_score(cacc: float, asr: float) -> float:
    """The Anti-BAD challenge's task score sqrt(CACC x (1 - ASR)) on fractions."""
    if not (np.isfinite(cacc) and np.isfinite(asr)):
        return math.nan
    return math.sqrt(max(cacc, 0.0) * max(1.0 - asr, 0.0))


def der(cacc: float, asr: float, cacc_none: float, asr_none: float) -> float:
    """BackdoorBench's DER against the undefended model: [max(0, dASR) - max(0, dCACC) + 1] / 2, with
    dASR = ASR(none) - ASR and dCACC = CACC(none) - CACC (a CACC loss lowers it)."""
    if not all(np.isfinite(x) for x in (cacc, asr, cacc_none, asr_none)):
        return math.nan
    return (max(0.0, asr_none - asr) - max(0.0, cacc_none - cacc) + 1.0) / 2.0


def _clean_flag(v: object) -> bool:
    return bool(v) if v is not None and v == v else False


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell over its seeds (see the module doc for the columns)."""
    cols = ["dataset", "backbone", "attack", "defense", "poison_rate", "label_regime", "target_label",
            "trigger_count", "profile", "settings", "shared_settings", "uses_clean", "n_seeds", "seeds",
            "cacc", "cacc_std", "cacc_lo", "cacc_hi", "asr", "asr_std", "asr_lo", "asr_hi",
            "clean_to_target", "excess_asr", "task_score", "task_score_lo", "task_score_hi", "der", "duplicate_seed_rows"]
    if df is None or not len(df):
        return pd.DataFrame(columns=cols)
    df = df.copy()
    for c in CELL:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    rows = []
    for key, g in df.groupby(CELL, sort=False, dropna=False):
        row = dict(zip(CELL, key))
        row["duplicate_seed_rows"] = int(len(g) - g["seed"].nunique())
        # records of the same cell and seed made by different code (e.g. before a defense's version
        # changed, under a default that changed) are averaged per seed first: a seed counts once
        g = g.assign(cacc=pd.to_numeric(g["cacc"], errors="coerce"), asr=pd.to_numeric(g["asr"], errors="coerce"),
                     clean_to_target=pd.to_numeric(g.get("clean_to_target"), errors="coerce"))
        g = g.groupby("seed", as_index=False).agg({"cacc": "mean", "asr": "mean", "clean_to_target": "mean",
                                                   **{c: "first" for c in ("trigger_count", "uses_clean")
                                                      if c in g}})
        cacc = pd.to_numeric(g["cacc"], errors="coerce").to_numpy(float)
        asr = pd.to_numeric(g["asr"], errors="coerce").to_numpy(float)
        ctt = pd.to_numeric(g.get("clean_to_target"), errors="coerce").to_numpy(float)
        per_seed_score = np.array([task_score(c, a) for c, a in zip(cacc, asr)])
        row["cacc"], row["cacc_std"], row["cacc_lo"], row["cacc_hi"] = t_interval(cacc)
        row["asr"], row["asr_std"], row["asr_lo"], row["asr_hi"] = t_interval(asr)
        row["task_score"], _, row["task_score_lo"], row["task_score_hi"] = t_interval(per_seed_score)
        row["clean_to_target"] = float(np.nanmean(ctt)) if np.isfinite(ctt).any() else math.nan
        row["excess_asr"] = row["asr"] - row["clean_to_target"]
        row["n_seeds"] = int(g["seed"].nunique())
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].unique()))
        row["trigger_count"] = g["trigger_count"].iloc[0] if "trigger_count" in g else None
        row["uses_clean"] = any(_clean_flag(v) for v in g.get("uses_clean", []))
        row["shared_settings"] = shared_settings(row["settings"], row["defense"])
        rows.append(row)
    out = pd.DataFrame(rows)
    base = out[out["defense"] == "none"].set_index(CONTEXT)[["cacc", "asr"]]
    base = base[~base.index.duplicated()]
    ders = []
    for _, r in out.iterrows():
        k = tuple(r[c] for c in CONTEXT)
        if k in base.index:
            b = base.loc[k]
            ders.append(der(r["cacc"], r["asr"], float(b["cacc"]), float(b["asr"])))
        else:
            ders.append(math.nan)  # no undefended run of this cell to rate against
    out["der"] = ders
    return out[cols].reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per defense over the cells it ran, best task score first."""
    cols = ["defense", "n_cells", "min_seeds", "task_score", "der", "mean_rank", "cacc", "asr", "excess_asr",
            "worst_attack", "worst_asr", "uses_clean"]
    cells = aggregate(df)
    if not len(cells):
        return pd.DataFrame(columns=cols)
    cells = cells.copy()
    cells["rank"] = cells.groupby(CONTEXT, dropna=False)["task_score"].rank(ascending=False, method="average")
    rows = []
    for name, g in cells.groupby("defense", sort=True):
        worst = g.loc[g["asr"].idxmax()] if g["asr"].notna().any() else None
        several = g["dataset"].nunique() > 1 or g["backbone"].nunique() > 1
        rows.append({
            "defense": name,
            "n_cells": len(g),
            "min_seeds": int(g["n_seeds"].min()),
            "task_score": g["task_score"].mean(),
            "der": g["der"].mean(),
            "mean_rank": g["rank"].mean(),
            "cacc": g["cacc"].mean(),
            "asr": g["asr"].mean(),
            "excess_asr": g["excess_asr"].mean(),
            "worst_attack": None if worst is None else (
                f"{worst['attack']} ({worst['dataset']}, {worst['backbone']})" if several else worst["attack"]),
            "worst_asr": None if worst is None else worst["asr"],
            "uses_clean": bool(g["uses_clean"].any()),
        })
    return (pd.DataFrame(rows, columns=cols)
            .sort_values(["task_score", "defense"], ascending=[False, True], na_position="last")
            .reset_index(drop=True))


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value of two seed samples; nan with fewer than 2 seeds on a side.
    Two samples with no spread at all differ (p 0) when their means do, else not (p 1)."""
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _finite(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def interval_text(mean: object, lo: object, hi: object, n: int) -> str:
    """Mean ± half-width of its interval, in percent, one decimal; the mean alone with fewer than 2 seeds
    or no finite interval; "" with no finite mean. The one spelling of an interval in leaderboards and tables."""
    m, lo, hi = _finite(mean), _finite(lo), _finite(hi)
    if m is None:
        return ""
    if n < 2 or lo is None or hi is None:
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} ± {100 * (hi - lo) / 2:.1f}"


def p_text(a: np.ndarray, b: np.ndarray, digits: int = 3) -> str:
    """Welch's p of two seed samples as table text: "-" with fewer than 2 seeds on a side, "< 0.001" below that."""
    return p_format(welch_p(a, b), digits)


def p_format(p: float, digits: int = 3) -> str:
    """A p-value as table text: "-" when there is none (nan), "< 0.001" below that."""
    if math.isnan(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.{digits}f}"
