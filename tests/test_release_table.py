"""The release-vs-ours tables of docs/findings.md (bench/reporting/tables/release.py, `bench table release`), read from the
committed GPU folders."""

import json
from pathlib import Path

import numpy as np
from scipy import stats

from bench.reporting.tables import release as rt

ROOT = Path(__file__).resolve().parents[1]


def seed_values(folder: Path, dataset: str, attack: str, defense: str, metric: str) -> np.ndarray:
    """Straight from the records, not through the leaderboard files the script reads."""
    out = []
    for f in sorted((folder / "records").glob("*.json")):
        r = json.loads(f.read_text())
        row = r["row"]
        if (row["dataset"], row["attack"], row["defense"]) == (dataset, attack, defense):
            out.append(row[metric])
    return np.array(out)


def test_each_release_attack_sits_beside_ours_with_welch_p_from_the_seeds():
    folder = ROOT / "results" / "imported" / "release-seeds-h100"
    lines = rt.table(folder, "sst2", ["none"]).splitlines()[2:]
    assert [ln.split(" | ")[0] for ln in lines] == [
        "| badnets / badnets", "| addsent / addsent", "| stylebkd / style", "| synbkd / syntactic"]
    syn = lines[3].split(" | ")
    a = seed_values(folder, "sst2", "file:musclelora-synbkd", "none", "asr")
    b = seed_values(folder, "sst2", "syntactic", "none", "asr")
    assert len(a) == len(b) == 3 and syn[2] == "3/3"
    assert syn[-1].rstrip(" |") == f"{stats.ttest_ind(a, b, equal_var=False).pvalue:.2f}"
    assert syn[6].startswith(f"{100 * a.mean():.1f} ± ")


def test_a_cell_that_did_not_run_says_so_and_one_seed_has_no_interval_or_p():
    folder = ROOT / "results" / "imported" / "release-defenses-h100"
    row = next(ln for ln in rt.table(folder, "sst2", ["musclelora"]).splitlines() if ln.startswith("| badnets"))
    cols = row.split(" | ")
    assert cols[2] == "1/0" and cols[4] == "not run" and cols[5] == "-" and "±" not in row
