"""What the victim cache saved in a results folder: trainings done, and what the same cells would
have cost if every cell trained its own victim (an estimate from the records' measured times).

    python benchmarks/victim_cache_savings.py results/baselines-inference
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bench.reporting.results import load_records


def summary(folder: Path) -> str:
    recs = load_records(folder)
    if not recs:
        return f"{folder}: no records"
    trained = {r["row"]["victim"]: r for r in recs if r["row"].get("victim_trained_here")}
    uses = Counter(r["row"]["victim"] for r in recs)
    wall = sum(r["provenance"]["wall_seconds"] for r in recs)
    # a victim's training cost: the wall time of the cell that trained it, less what that cell spent
    # evaluating (calibration and prediction); a cell that reused it would have paid this again
    def train_cost(r: dict) -> float:
        ev = r.get("evaluation", {})
        return r["provenance"]["wall_seconds"] - ev.get("calibrate_seconds", 0) - ev.get("predict_seconds", 0)

    extra = sum(train_cost(trained[v]) * (n - 1) for v, n in uses.items() if v in trained)
    lines = [
        f"{folder}: {len(recs)} cells, {len(uses)} victims ({len(trained)} trained in these cells)",
        f"cells' wall time, summed: {wall / 60:.1f} min",
        f"victim training (cells that trained one): {sum(map(train_cost, trained.values())) / 60:.1f} min, "
        f"{sum(map(train_cost, trained.values())) / max(1, len(trained)) / 60:.1f} min per victim",
        f"the same cells with no victim cache (each cell trains its own): about {(wall + extra) / 60:.1f} min "
        f"({(wall + extra) / max(wall, 1e-9):.1f}x)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["results/baselines-inference"]:
        print(summary(Path(arg)))
