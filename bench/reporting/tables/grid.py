"""Defense x attack tables (one per dataset) of one seed's records, as docs/findings.md shows them:
CACC / ASR in percent; `none`'s and the controls' untriggered rate in brackets; the data filters'
precision / recall of removed rows; the rejecting defenses' FRR and rejected poisoned inputs. Reads the
folder's leaderboard.csv (what `bench leaderboard` rebuilds from the records).

    bench table grid results/grid-h200 [SEED]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import read_leaderboard_csv
from .defenses import cell_text

ATTACKS = ["badnets", "addsent", "syntactic", "style", "hiddenkiller"]
ORDER = ["none", "onion", "strip", "rap", "badacts", "bki", "zdefense", "cube", "btu", "dpoe", "lora", "mslr",
         "ga", "ga-lora", "musclelora", "adapter", "prefix", "moderate-fitting", "clean-only", "none+clean"]
FILTERS = {"bki", "zdefense", "cube"}
UNTRIGGERED = {"none", "clean-only", "none+clean"}
NAMES = {"clean-only": "`clean-only` (control)", "none+clean": "`none+clean` (control)"}


def cell(w: pd.Series, defense: str) -> str:
    s = cell_text(w)  # CACC / ASR, and FRR / rejected poison where the defense rejects
    if defense in UNTRIGGERED:
        s += f" ({100 * w.clean_to_target:.1f})"
    if defense in FILTERS:
        s += f"; P {w.filter_precision:.2f}" if pd.notna(w.filter_precision) else "; P -"
        s += f" R {w.filter_recall:.2f}"
    return s


def tables(folder: Path, seed: int = 1) -> str:
    df = read_leaderboard_csv(folder / "leaderboard.csv")
    recs = {(w.dataset, w.attack, w.defense): w for _, w in df[df.seed == seed].iterrows()}
    out = []
    for ds in sorted({k[0] for k in recs}, key=lambda d: (d != "sst2", d)):
        attacks = [a for a in ATTACKS if any(k[:2] == (ds, a) for k in recs)]
        heads = []
        for a in attacks:
            w = next(v for k, v in recs.items() if k[:2] == (ds, a))
            heads.append(f"{a} ({w.label_regime}, {w.poison_rate})")
        out += [f"{ds}, seed {seed}:", "", "| defense | " + " | ".join(heads) + " |", "|---|" + "---|" * len(attacks)]
        defenses = [d for d in ORDER if any(k[0] == ds and k[2] == d for k in recs)]
        defenses += sorted({k[2] for k in recs if k[0] == ds} - set(defenses))
        for d in defenses:
            cells = [cell(recs[(ds, a, d)], d) if (ds, a, d) in recs else "(not run)" for a in attacks]
            out.append(f"| {NAMES.get(d, f'`{d}`')} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
