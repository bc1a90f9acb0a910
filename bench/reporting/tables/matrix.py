"""The setting matrix (docs/fidelity.md, run 7): each defense's ASR at the main job's point and with one factor
changed at a time, read by the rule declared there before the runs:

- removes: mean ASR within 15 points of the same cells' untriggered rate (`clean_to_target`);
- fails: mean ASR within 15 points of `none`'s on the same seeds;
- partial: anything between;
- no backdoor: `none` itself is within 15 points of its untriggered rate (nothing to remove: the cell says
  nothing about the defense).
With 3 or more seeds the cell also gives Welch's p of the defense's ASR against `none`'s.

    bench table matrix results/setting-matrix-h200
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..results import read_leaderboard_csv
from ..scores import welch_p

BAND = 0.15
FACTOR = ["label_regime", "trigger_count", "poison_rate", "n_train"]
# the main job's point; every other column changes one factor of it
MAIN = ("clean-label", 4, 0.1, 1500)


def factor_name(key: tuple) -> str:
    """The column title: what this point changes against the main job's."""
    changed = [f"{name}: {value}" for name, value, main in zip(
        ["label", "triggers", "rate", "train rows"], key, MAIN) if value != main]
    return "main point" if not changed else "; ".join(changed)


def reading(asr: float, untriggered: float, asr_none: float, untriggered_none: float) -> str:
    if asr_none - untriggered_none <= BAND:
        return "no backdoor"
    if asr - untriggered <= BAND:
        return "removes"
    if asr_none - asr <= BAND:
        return "fails"
    return "partial"


def cells(folder: Path) -> pd.DataFrame:
    """One row per (factor point, defense): seeds, means, the reading and Welch's p against `none`."""
    d = read_leaderboard_csv(folder / "leaderboard.csv")
    d["trigger_count"] = d.trigger_count.astype(int)
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred")  # Welch's test on seeds that agree exactly
        for key, g in d.groupby(FACTOR):
            none = g[g.defense == "none"].set_index("seed")
            for defense, a in g.groupby("defense"):
                a = a.set_index("seed")
                shared = sorted(set(a.index) & set(none.index))
                if not shared:
                    continue
                a, n = a.loc[shared], none.loc[shared]
                p = welch_p(a.asr.to_numpy(), n.asr.to_numpy()) if len(shared) >= 3 and defense != "none" else None
                out.append({"point": factor_name(key), "key": key, "defense": defense, "seeds": len(shared),
                            "cacc": 100 * a.cacc.mean(), "asr": 100 * a.asr.mean(),
                            "untriggered": 100 * a.clean_to_target.mean(), "asr_none": 100 * n.asr.mean(),
                            "p": p, "reading": reading(a.asr.mean(), a.clean_to_target.mean(), n.asr.mean(),
                                                       n.clean_to_target.mean())})
    return pd.DataFrame(out)


def _order(points: pd.DataFrame) -> list[str]:
    keys = sorted(set(points.key), key=lambda k: (k != MAIN, k[3], k[0], k[1], k[2]))
    return [factor_name(k) for k in keys]


def table(folder: Path) -> str:
    c = cells(folder)
    cols = _order(c)
    defenses = ["none"] + sorted(set(c.defense) - {"none"})
    head = "| defense | " + " | ".join(cols) + " |"
    out = ["ASR in percent, mean over the seeds (n, when under 3); the reading of docs/fidelity.md's rule "
           "(**removes**, partial, fails; `none`'s column: its ASR and untriggered rate); p: Welch's test of the "
           "ASR against `none`'s on the same seeds (3 or more).", "", head, "|---" * (len(cols) + 1) + "|"]
    for defense in defenses:
        row = [f"`{defense}`"]
        for col in cols:
            hit = c[(c.point == col) & (c.defense == defense)]
            if hit.empty:
                row.append("-")
                continue
            r = hit.iloc[0]
            n = "" if r.seeds >= 3 else f" (n={r.seeds})"
            if defense == "none":
                row.append(f"{r.asr:.1f} [{r.untriggered:.1f}]{n}" + (" no backdoor" if r.reading == "no backdoor" else ""))
                continue
            word = {"removes": "**removes**"}.get(r.reading, r.reading)
            p = "" if pd.isna(r.p) else (f", p {r.p:.3f}" if r.p >= 0.001 else ", p < 0.001")
            row.append(f"{r.asr:.1f}{n} {word}{p}")
        out.append("| " + " | ".join(row) + " |")
    out += ["", "CACC in percent, mean over the same seeds:", "", head, "|---" * (len(cols) + 1) + "|"]
    for defense in defenses:
        row = [f"`{defense}`"]
        for col in cols:
            hit = c[(c.point == col) & (c.defense == defense)]
            row.append("-" if hit.empty else f"{hit.iloc[0].cacc:.1f}")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)
