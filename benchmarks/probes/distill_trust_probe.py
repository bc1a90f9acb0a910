"""Where do a content-preserving trigger's flipped rows sit in distill's teacher? (issue 25, version 4)

    python benchmarks/probes/distill_trust_probe.py --attacks style syntactic --seeds 1 2 3 \
        --out results/probes/distill-trust

`distill` version 4 distrusts, per class, the excess of disagreeing labels whose label its clean teacher
finds least likely. That works if the teacher contradicts flipped rows more confidently than it
contradicts honest rows it gets wrong. This probe reads the teacher (the cached one of the main job's
`distill` cell: SST-2, MiniLM, cpu profile on 1,500 rows, 384 clean rows) on the training rows and
splits them with the attack's own flags (an analysis, not a defense: the defense never sees them):

- `flipped`: poisoned rows whose label was changed to the target (dirty-label poison);
- `clean_label_poison`: poisoned rows that kept their (target) label;
- `honest`: unpoisoned rows.

Per group: rows, how many the teacher disagrees with, the median teacher probability of the row's
label among those, and how many version 4's thresholds distrust. `auc` is the probability that a
disagreeing flipped row has a lower teacher probability of its label than a disagreeing honest row of
the target class (1.0: the ranking v4 relies on is perfect; 0.5: it is chance). No number here chooses
a setting. Writes ``OUT/probe.json`` (with provenance) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.engine.cell import Evaluator, prepare
from bench.engine.profiles import MAIN_JOB, get_profile
from bench.models.hardware import configure_threads
from bench.reporting.results import provenance, write_text_atomic
from bench.runner import DataCache, plan


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
    prof = get_profile(MAIN_JOB.profile, dict(MAIN_JOB.profile_settings))
    data = DataCache().get("sst2")
    ev = Evaluator()
    rows_out = []
    for attack in args.attacks:
        for seed in args.seeds:
            cell = plan(["sst2"], ["minilm"], [attack], ["distill"], [seed], prof)[0]
            prep = prepare(cell, data)
            p = prep.poisoned
            ctx = ev.context(cell, prep)
            ctx.log = lambda **kw: None  # the defense's own log is not this probe's output
            d = cell.defense.build()
            keep = d.select_train(p.train, ctx)
            train = p.train if keep is None else p.train.select(np.flatnonzero(keep))
            label = np.asarray(train["label"])
            flags = np.asarray(train["poisoned"]) == 1
            flipped = flags & (np.asarray(train["orig_label"]) != label)
            logits = torch.as_tensor(np.asarray(d._teacher.logits(list(train["text"]))), dtype=torch.float32)
            pred = logits.argmax(-1).numpy()
            p_label = logits.softmax(-1)[torch.arange(len(label)), torch.as_tensor(label)].numpy()
            tau = d._tau.numpy()
            disagree = pred != label
            distrusted = disagree & (p_label < tau[label])
            target = p.target_label
            groups = {"flipped": flipped, "clean_label_poison": flags & ~flipped,
                      "honest_target_class": ~flags & (label == target),
                      "honest_other_classes": ~flags & (label != target)}
            out = {"attack": attack, "seed": seed, "target_label": target, "tau": tau.tolist(), "groups": {}}
            for g, m in groups.items():
                dm = m & disagree
                out["groups"][g] = {"rows": int(m.sum()), "teacher_disagrees": int(dm.sum()),
                                    "median_p_label_when_disagreeing": round(float(np.median(p_label[dm])), 4)
                                    if dm.any() else None,
                                    "distrusted": int((m & distrusted).sum())}
            out["auc_flipped_vs_honest_target"] = round(auc(p_label[flipped & disagree],
                                                            p_label[groups["honest_target_class"] & disagree]), 4)
            rows_out.append(out)
            print(json.dumps(out), flush=True)
    command = (f"python benchmarks/probes/distill_trust_probe.py --attacks {' '.join(args.attacks)} --seeds "
               f"{' '.join(map(str, args.seeds))} --out {args.out}")
    result = {"setting": {"dataset": "sst2", "backbone": "minilm", "defense": "distill (version 4 defaults)",
                          "profile": prof.name, **dict(MAIN_JOB.profile_settings)},
              "cells": rows_out, "threads": threads, "provenance": provenance(command, time.perf_counter() - t0)}
    write_text_atomic(args.out / "probe.json", json.dumps(result, indent=1) + "\n")
    lines = ["| attack | seed | flipped: disagreed / rows | distrusted | honest target-class disagreeing: distrusted / n "
             "| median p(label): flipped / honest | AUC |", "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        f, h = r["groups"]["flipped"], r["groups"]["honest_target_class"]
        lines.append(f"| {r['attack']} | {r['seed']} | {f['teacher_disagrees']} / {f['rows']} | {f['distrusted']} | "
                     f"{h['distrusted']} / {h['teacher_disagrees']} | {f['median_p_label_when_disagreeing']} / "
                     f"{h['median_p_label_when_disagreeing']} | {r['auc_flipped_vs_honest_target']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
