"""Where do a content-preserving trigger's poisoned rows go in `distill`? (issue 25, version 4)

    python benchmarks/probes/distill_trust_probe.py --attacks style syntactic --seeds 1 2 3 \
        --out results/probes/distill-trust

`distill` version 4 distrusts, per class, the excess of disagreeing labels whose label its clean teacher
finds least likely. That works if the teacher contradicts flipped rows more confidently than it
contradicts honest rows it gets wrong. This probe runs version 4's row selection on the main job's
`distill` cell (SST-2, MiniLM, cpu profile on 1,500 rows, 384 clean rows; the teacher comes from the
victim cache) and splits the training rows with the attack's own flags (an analysis, not a defense: the
defense never sees them):

- `flipped`: poisoned rows whose label was changed to the target (dirty-label poison);
- `clean_label_poison`: poisoned rows that kept their (target) label;
- `honest_target_class`, `honest_other_classes`: unpoisoned rows by label.

Per group: rows, rows the word guard drops, and among the rows kept: how many the teacher disagrees
with, the median teacher probability of the row's label there, and how many version 4's thresholds
distrust. `auc` is the probability that a disagreeing flipped row has a lower teacher probability of
its label than a disagreeing honest target-class row (1.0: the ranking version 4 relies on is perfect;
0.5: chance). No number here chooses a setting. Writes ``OUT/probe.json`` (with provenance) and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.models.hardware import configure_threads
from bench.reporting.results import provenance, write_text_atomic
from main_job_cell import MainJobCells


def auc(low: np.ndarray, high: np.ndarray) -> float:
    """P(a value of ``low`` < a value of ``high``), ties counted half (the Mann-Whitney statistic)."""
    if len(low) == 0 or len(high) == 0:
        return float("nan")
    diff = low[:, None] - high[None, :]
    return float(((diff < 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", nargs="+", default=["style", "syntactic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("results/probes/distill-trust"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    threads = configure_threads()["threads"]
    cells = MainJobCells("sst2")
    rows_out = []
    for attack in args.attacks:
        for seed in args.seeds:
            cell, prep, ctx = cells.cell(attack, "distill", seed)
            p = prep.poisoned
            ctx.log = lambda **kw: None  # the defense's own log is not this probe's output
            d = cell.defense.build()  # the registered defaults (version 4)
            keep = d.select_train(p.train, ctx)
            keep = np.ones(len(p.train), dtype=bool) if keep is None else keep
            label = np.asarray(p.train["label"])
            flags = np.asarray(p.train["poisoned"]) == 1
            flipped = flags & (np.asarray(p.train["orig_label"]) != label)
            logits = torch.as_tensor(np.asarray(d._teacher.logits(list(p.train["text"]))), dtype=torch.float32)
            pred = logits.argmax(-1).numpy()
            p_label = logits.softmax(-1)[torch.arange(len(label)), torch.as_tensor(label)].numpy()
            tau = d._tau.numpy()
            disagree = keep & (pred != label)
            distrusted = disagree & (p_label < tau[label])
            target = p.target_label
            groups = {"flipped": flipped, "clean_label_poison": flags & ~flipped,
                      "honest_target_class": ~flags & (label == target),
                      "honest_other_classes": ~flags & (label != target)}
            out = {"attack": attack, "seed": seed, "target_label": target, "tau_v4": tau.tolist(), "groups": {}}
            for g, m in groups.items():
                dm = m & disagree
                out["groups"][g] = {"rows": int(m.sum()), "word_guard_drops": int((m & ~keep).sum()),
                                    "teacher_disagrees": int(dm.sum()),
                                    "median_p_label_when_disagreeing": round(float(np.median(p_label[dm])), 4)
                                    if dm.any() else None,
                                    "v4_distrusted": int((m & distrusted).sum())}
            out["auc_flipped_vs_honest_target"] = round(auc(p_label[flipped & disagree],
                                                            p_label[groups["honest_target_class"] & disagree]), 4)
            rows_out.append(out)
            print(json.dumps(out), flush=True)
    command = (f"python benchmarks/probes/distill_trust_probe.py --attacks {' '.join(args.attacks)} --seeds "
               f"{' '.join(map(str, args.seeds))} --out {args.out}")
    result = {"setting": {**cells.setting(), "defense": "distill (version 4 defaults)"},
              "cells": rows_out, "threads": threads, "provenance": provenance(command, time.perf_counter() - t0)}
    write_text_atomic(args.out / "probe.json", json.dumps(result, indent=1) + "\n")
    lines = ["| attack | seed | flipped rows | flipped the teacher disagrees with / distrusted | "
             "clean-label poison rows / teacher disagrees | honest target-class disagreeing / distrusted | "
             "median p(label): flipped / honest | AUC |", "|---|---|---|---|---|---|---|---|"]
    for r in rows_out:
        f, c, h = (r["groups"][g] for g in ("flipped", "clean_label_poison", "honest_target_class"))
        lines.append(f"| {r['attack']} | {r['seed']} | {f['rows']} | {f['teacher_disagrees']} / {f['v4_distrusted']} | "
                     f"{c['rows']} / {c['teacher_disagrees']} | {h['teacher_disagrees']} / {h['v4_distrusted']} | "
                     f"{f['median_p_label_when_disagreeing']} / {h['median_p_label_when_disagreeing']} | "
                     f"{r['auc_flipped_vs_honest_target']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
