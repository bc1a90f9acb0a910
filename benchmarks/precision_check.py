"""The 3-seed check of a numerics lever: the same cells in fp32 and in bf16 autocast, per defense, tested
against seed noise (docs/cost.md asks it of bf16 before any record may use it).

    python benchmarks/precision_check.py FP32_FOLDER BF16_FOLDER [--setting profile.precision=bf16]

Reads each folder's ``leaderboard.csv`` (one row per cell and seed), drops ``--setting`` from the second
folder's ``settings`` column so that a bf16 cell joins the fp32 cell it repeats, and prints one Markdown row
per cell found in both: CACC and ASR of each side (mean over seeds), the delta in points and Welch's p
(``bench.reporting.results.compare`` across seeds). Cells in only one folder are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.reporting.results import compare, read_leaderboard_csv


def without_setting(settings: object, setting: str) -> str:
    """``settings`` (``a=1; b=2``) with ``setting`` removed; "" when nothing is left."""
    if not isinstance(settings, str):
        return ""
    return "; ".join(p.strip() for p in settings.split(";") if p.strip() and p.strip() != setting)


def check(fp32: Path, bf16: Path, setting: str = "profile.precision=bf16") -> str:
    a = read_leaderboard_csv(fp32 / "leaderboard.csv")
    b = read_leaderboard_csv(bf16 / "leaderboard.csv")
    if not b["settings"].map(lambda s: isinstance(s, str) and setting in s).any():
        raise SystemExit(f"{bf16}: no cell carries {setting!r}; pass the folder of the bf16 run second")
    b = b.assign(settings=b["settings"].map(lambda s: without_setting(s, setting)))
    both, only_a, only_b = compare(a, b, across_seeds=True)
    lines = [
        f"fp32: {fp32}; bf16: {bf16} (`{setting}` dropped before the join); "
        f"{len(both)} cells in both, {len(only_b)} bf16 cells without an fp32 twin",
        "",
        "| dataset | backbone | attack | defense | seeds (fp32, bf16) | CACC fp32 | CACC bf16 | ΔCACC | p | "
        "ASR fp32 | ASR bf16 | ΔASR | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in both.sort_values(["dataset", "backbone", "attack", "defense"]).iterrows():
        p = lambda v: "-" if pd.isna(v) else ("< 0.001" if v < 0.001 else f"{v:.3f}")  # noqa: E731
        lines.append(
            f"| {r.dataset} | {r.backbone} | {r.attack} | {r.defense} | {int(r.n_seeds_a)}, {int(r.n_seeds_b)} | "
            f"{r.cacc_a:.1f} | {r.cacc_b:.1f} | {r.d_cacc:+.1f} | {p(r.p_cacc)} | "
            f"{r.asr_a:.1f} | {r.asr_b:.1f} | {r.d_asr:+.1f} | {p(r.p_asr)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("bf16", type=Path)
    ap.add_argument("--setting", default="profile.precision=bf16")
    args = ap.parse_args(argv)
    print(check(args.fp32, args.bf16, args.setting))


if __name__ == "__main__":
    main(sys.argv[1:])
