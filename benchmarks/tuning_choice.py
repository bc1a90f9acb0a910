"""The declared choice of the MuScleLoRA family's `cpu` schedule (docs/tuning.md).

Reads the tuning cells in a results folder (AG News, dirty-label BadNets: `none` and each of
`musclelora`, `ga`, `ga-lora` at the four declared (reference_size, ga_epoch) candidates) and applies
the rule declared before they ran:

- per defense, the candidate with the highest task score sqrt(CACC x (100 - ASR)) wins;
- a candidate beats the paper's (96, 1) only by more than 0.5 points (closer is a tie, and a tie keeps
  the paper's value);
- if `none` has ASR below 50 % there (no backdoor worth tuning against), every defense keeps the paper's
  values; a defense with a missing candidate cell keeps its current default and says so.

Prints `--set` arguments for `bench run` (one line) and writes `choice.json` beside the records.

    python3 benchmarks/tuning_choice.py results/tuning-protocol/family
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.reporting.results import load_records
from bench.reporting.scores import task_score

CANDIDATES = [(384, 0), (96, 1), (96, 0), (384, 1)]
PAPER = (96, 1)
CURRENT = (384, 0)  # the cpu defaults before this protocol (chosen on SST-2 test ASR: not evidence)
FAMILY = ("musclelora", "ga", "ga-lora")
TIE = 0.5
MIN_NONE_ASR = 0.5


def choose(rows: list[dict]) -> dict:
    """rows: the records' rows (dicts with defense, cacc, asr and the defense config). Returns the choice."""
    none = [r for r in rows if r["defense"] == "none"]
    out: dict = {"rule": "\n\n".join(__doc__.split("\n\n")[1:3]).strip(), "none": None, "choices": {}}
    if none:
        out["none"] = {"cacc": none[0]["cacc"], "asr": none[0]["asr"]}
    backdoor = bool(none) and none[0]["asr"] >= MIN_NONE_ASR
    for name in FAMILY:
        scores = {}
        for r in rows:
            if r["defense"] == name:
                cand = (r["reference_size"], r["ga_epoch"])
                if cand in CANDIDATES:
                    scores[cand] = 100 * task_score(r["cacc"], r["asr"])
        entry = {"scores": {f"{a}/{b}": round(s, 2) for (a, b), s in scores.items()}}
        if not none:
            entry.update(chosen=CURRENT, why="no `none` cell: the protocol cannot be applied; current default kept")
        elif not backdoor:
            entry.update(chosen=PAPER, why=f"`none` ASR {100 * none[0]['asr']:.1f} < 50: no backdoor to tune "
                                           "against; the paper's values")
        elif set(scores) != set(CANDIDATES):
            entry.update(chosen=CURRENT, why=f"candidates missing ({sorted(set(CANDIDATES) - set(scores))}): "
                                             "current default kept")
        else:
            best = max(scores, key=lambda c: (scores[c], c == PAPER))
            if best != PAPER and scores[best] - scores[PAPER] <= TIE:
                entry.update(chosen=PAPER, why=f"best {best} is within {TIE} of the paper's: a tie keeps the paper's")
            else:
                entry.update(chosen=best, why="highest task score")
        entry["chosen"] = list(entry["chosen"])
        out["choices"][name] = entry
    return out


def rows_of(folder: Path) -> list[dict]:
    rows = []
    for rec in load_records(folder):
        cfg = rec["config"]["defense"].get("config", {})
        rows.append({**rec["row"], "reference_size": cfg.get("reference_size"), "ga_epoch": cfg.get("ga_epoch")})
    return rows


def main() -> None:
    folder = Path(sys.argv[1])
    choice = choose(rows_of(folder))
    (folder / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
    print(" ".join(f"--set {n}.reference_size={c['chosen'][0]} --set {n}.ga_epoch={c['chosen'][1]}"
                   for n, c in choice["choices"].items()))


if __name__ == "__main__":
    main()
