"""The fidelity table (docs/fidelity.md): each defense cell of the `results/fidelity/` folders beside `none` on the
same victims (same attack, label regime, trigger count and seeds), over seeds, with the verdict of the rules
declared in docs/fidelity.md before the runs were read:

- reproduced: mean ASR <= the defense's declared bound and CACC within 3 points of `none`;
- reproduced in direction only: ASR lowered against `none` by >= 30 points with Welch p < 0.05;
- not reproduced: otherwise.

    bench table fidelity results/fidelity
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import read_leaderboard_csv
from ..scores import interval_text, p_text, t_interval, welch_p

# declared in docs/fidelity.md before any fidelity number was read: the published point + 10 points
BOUND = {"onion": 0.30, "badacts": 0.10, "rap": 0.15}
# run 6: no published ASR could be read offline (docs/fidelity.md), so only the direction rule can give a verdict
DIRECTION_ONLY = {"strip", "bki", "cube", "zdefense", "dpoe", "btu", "musclelora"}
CACC_SLACK, DIRECTION = 0.03, 0.30
# the victims a defense cell is compared with: the same attack setting, training size and test slice
SETTING = ["dataset", "attack", "label_regime", "trigger_count", "poison_rate", "n_train", "n_test_clean"]


def _own(settings: str, defense: str) -> str:
    """The defense's own settings in a row's settings text (what tells two cells of one defense apart)."""
    parts = [p for p in str(settings if isinstance(settings, str) else "").split("; ") if p.startswith(defense + ".")]
    return "; ".join(parts) or "(defaults)"


def verdict(defense: str, asr: np.ndarray, cacc: np.ndarray, asr_none: np.ndarray, cacc_none: np.ndarray) -> str:
    bound = BOUND.get(defense)
    if bound is None and defense not in DIRECTION_ONLY:
        return "-"
    if bound is None:
        direction = asr_none.mean() - asr.mean() >= DIRECTION and welch_p(asr, asr_none) < 0.05
        return "in direction only" if direction else "not reproduced"
    if asr.mean() <= bound and cacc_none.mean() - cacc.mean() <= CACC_SLACK:
        return "reproduced"
    p = welch_p(asr, asr_none)
    if asr_none.mean() - asr.mean() >= DIRECTION and p < 0.05:
        return "in direction only"
    return "not reproduced"


def rows(root: Path) -> list[dict]:
    """Each defense cell of every results folder under ``root``, beside `none` of the same setting and seeds
    (`none` may sit in another folder of ``root``: a post-training defense shares its victims)."""
    frames = [read_leaderboard_csv(f).assign(folder=f.parent.name) for f in sorted(root.rglob("leaderboard.csv"))]
    if not frames:
        return []
    seeds = pd.concat(frames, ignore_index=True)
    seeds["own"] = [_own(s, d) for s, d in zip(seeds.settings, seeds.defense)]
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred")  # Welch's test on seeds that agree exactly
        for (folder, *setting, defense, own), d in seeds[seeds.defense != "none"].groupby(
                ["folder", *SETTING, "defense", "own"], dropna=False):
            none = _control(seeds, "none", folder, setting)
            shared = sorted(set(d.seed) & set(none.seed))
            a, c = d.set_index("seed").loc[shared], none.set_index("seed").loc[shared]
            n = len(shared)
            control = _control(seeds, "clean-only", folder, setting) if defense != "clean-only" and bool(
                d.uses_clean.fillna(False).astype(bool).any()) else None
            both = sorted(set(d.seed) & set(control.seed)) if control is not None else []
            out.append({
                "folder": folder, **dict(zip(SETTING, setting)), "defense": defense, "settings": own, "seeds": n,
                "cacc": _interval(a.cacc), "asr": _interval(a.asr), "untriggered": 100 * a.clean_to_target.mean(),
                "excess": 100 * (a.asr - a.clean_to_target).mean(),
                "cacc_none": _interval(c.cacc), "asr_none": _interval(c.asr),
                "p": p_text(a.asr.to_numpy(), c.asr.to_numpy()),
                "asr_control": _interval(control.set_index("seed").loc[both].asr) if both else "-",
                "p_control": p_text(d.set_index("seed").loc[both].asr.to_numpy(),
                                    control.set_index("seed").loc[both].asr.to_numpy()) if len(both) >= 2 else "-",
                "verdict": verdict(defense, a.asr.to_numpy(), a.cacc.to_numpy(), c.asr.to_numpy(), c.cacc.to_numpy())
                if n >= 3 else "fewer than 3 seeds",
            })
    return out


def _control(seeds: pd.DataFrame, defense: str, folder: str, setting: list) -> pd.DataFrame:
    """``defense``'s cells of the same setting, one per seed: the folder's own first (the same victims, the same
    machine), then those of the other folders for seeds the folder lacks."""
    same = seeds[(seeds.defense == defense) & (seeds[SETTING] == pd.Series(dict(zip(SETTING, setting)))).all(axis=1)]
    same = same.assign(_other=same.folder != folder).sort_values(["_other", "folder"], kind="stable")
    return same.drop_duplicates("seed").drop(columns="_other")


def _interval(values: pd.Series) -> str:
    mean, _, lo, hi = t_interval(values.to_numpy(dtype=float))
    return interval_text(mean, lo, hi, len(values))


RANK = {"reproduced": 0, "in direction only": 1, "not reproduced": 2}


def summary(found: list[dict]) -> list[tuple[str, str, str]]:
    """Per baseline: its best verdict over the table's rows and the folders that gave it (the count issue 24's
    "at least 8 reproduced at least in direction" reads)."""
    best: dict[str, tuple[int, list[str]]] = {}
    for r in found:
        rank = RANK.get(r["verdict"])
        if rank is None:
            continue
        where = f"{r['folder']} ({r['settings']})" if r["settings"] != "(defaults)" else r["folder"]
        old = best.get(r["defense"])
        if old is None or rank < old[0]:
            best[r["defense"]] = (rank, [where])
        elif rank == old[0]:
            old[1].append(where)
    names = {v: k for k, v in RANK.items()}
    return [(d, names[rank], ", ".join(where)) for d, (rank, where) in sorted(best.items(), key=lambda kv: (kv[1][0], kv[0]))]


def table(root: Path) -> str:
    found = rows(root)
    head = ("| folder | attack | regime | triggers | defense | its settings | seeds | CACC | ASR | untriggered | "
            "ASR - untriggered | "
            "`none` CACC | `none` ASR | ASR p vs `none` | `clean-only` ASR | ASR p vs `clean-only` | verdict |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in found:
        out.append(f"| {r['folder']} | {r['attack']} | {r['label_regime']} | {r['trigger_count']} | `{r['defense']}` | "
                   f"{r['settings']} | {r['seeds']} | {r['cacc']} | {r['asr']} | {r['untriggered']:.1f} | {r['excess']:.1f} | "
                   f"{r['cacc_none']} | {r['asr_none']} | {r['p']} | {r['asr_control']} | {r['p_control']} | "
                   f"{r['verdict']} |")
    best = summary(found)
    held = sum(v != "not reproduced" for _, v, _ in best)
    out += ["", f"Per baseline, its best verdict ({held} of {len(best)} reproduced at least in direction):", "",
            "| defense | best verdict | where |", "|---|---|---|"]
    out += [f"| `{d}` | {v} | {w} |" for d, v, w in best]
    return "\n".join(out)
