"""Does a model trained on the poisoned set see a style trigger that a frozen one does not? (issue 25)

    python benchmarks/probes/victim_shift_probe.py --transforms poetry shakespeare --seeds 1 \
        --out results/probes/victim-shift-tuning

The withdrawn `distill` version 5 (docs/tuning.md) asked whether the training rows that sit apart from the
defender's clean rows are the poisoned ones, in a *frozen* MiniLM: they were not (at best 15-21 % of the
poison against 7-8 % of the honest rows; results/probes/shift-guard-tuning). A frozen sentence encoder maps
a paraphrase onto its source. A model fine-tuned on the poisoned set is a representation trained to see the
trigger (that is what the backdoor is), and the defender can train one: it is plain fine-tuning on the data
it holds. This probe runs the same two guards (`knn`, `logistic`; the clean rows' 0.95 quantile as the bar,
shift_guard_tuning.py says how) on such models' hidden states:

- `victim`: the model fine-tuned on the whole poisoned training set (``ctx.plain_victim()``, the `none`
  cell's model). Its training rows were seen in training and the clean rows were not, so a guard may
  separate "seen" from "unseen" rather than poison from honest; it is here to show how much.
- `cross-fit`: two models, each fine-tuned on one random half of the training set (``ctx.fit``), each
  scoring the other half against the clean rows, which neither saw: every scored row is unseen by the
  model that scores it.

Layers: the middle and last, pooled by the first token or the mean over tokens. Tuning set and rule as in
shift_guard_tuning.py, fixed in docs/tuning.md before the run: SST-2 StyleBkd with the poetry and
shakespeare transforms (no headline table holds them), training rows only, split by the attack's flags for
the analysis (no defense input); no test row is read. The candidate with the highest mean of (recall -
honest share dropped) is chosen; it becomes `distill` version 5's guard only if it drops at least half of
the poisoned rows on both transforms while dropping at most 10 % of the honest ones. Recall is also split
into the poisoned rows whose label was flipped and those whose label was already the target (clean-label).
Writes ``OUT/probe.json`` and prints a Markdown table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.reporting.results import provenance, write_text_atomic
from shift_guard_tuning import POOLINGS, dropped, knn_scores, logistic_scores, pooled_states, tuning_cells, tuning_setup

MIN_RECALL, MAX_HONEST = 0.5, 0.10
GUARDS = (("knn", knn_scores), ("logistic", logistic_scores))


def states(model, tokenizer, texts, prof, layers):
    return pooled_states(model, tokenizer, texts, prof.max_length, prof.eval_batch_size, layers)


def guard_flags(train_states, clean_states, keys):
    """{candidate: training rows dropped} for every guard x (layer, pooling)."""
    return {f"{g}: layer {layer}, {pooling}": dropped(fn(train_states[(layer, pooling)], clean_states[(layer, pooling)]),
                                                      len(train_states[(layer, pooling)]))
            for g, fn in GUARDS for layer, pooling in keys}


def summary(flagged, flags, flipped):
    return {"recall": round(float(flagged[flags].mean()), 4),
            "recall_flipped": round(float(flagged[flags & flipped].mean()), 4) if (flags & flipped).any() else None,
            "recall_clean_label": round(float(flagged[flags & ~flipped].mean()), 4) if (flags & ~flipped).any() else None,
            "honest_dropped": round(float(flagged[~flags].mean()), 4)}


def main(argv: list[str] | None = None) -> str:
    args, t0, threads, main_job = tuning_setup(argv, __doc__, "results/probes/victim-shift-tuning")
    prof = main_job.profile
    cells = []
    for transform, seed, train, clean, ctx in tuning_cells(main_job, args):
        texts, labels = list(train["text"]), list(train["label"])
        clean_texts = list(clean["text"])
        flags = np.asarray(train["poisoned"]) == 1
        flipped = np.asarray(train["label"]) != np.asarray(train["orig_label"])
        timing = {}

        t = time.perf_counter()
        victim = ctx.plain_victim()
        timing["victim_s"] = round(time.perf_counter() - t, 1)
        n_layers = victim.model.config.num_hidden_layers
        keys = [(layer, pooling) for pooling in POOLINGS for layer in (n_layers // 2, -1)]
        layers = sorted({k[0] for k in keys})
        tr, cl = (states(victim.model, victim.tokenizer, x, prof, layers) for x in (texts, clean_texts))
        res = {f"victim, {k}": summary(v, flags, flipped) for k, v in guard_flags(tr, cl, keys).items()}

        half = ctx.rng("probe-halves").permutation(len(texts)) % 2 == 0
        flagged = {}
        t = time.perf_counter()
        for side in (True, False):
            fit_rows, score_rows = np.flatnonzero(half == side), np.flatnonzero(half != side)
            model = ctx.fit([texts[i] for i in fit_rows], [labels[i] for i in fit_rows],
                            purpose=f"probe-half-{int(side)}")
            tr = states(model.model, model.tokenizer, [texts[i] for i in score_rows], prof, layers)
            cl = states(model.model, model.tokenizer, clean_texts, prof, layers)
            for k, v in guard_flags(tr, cl, keys).items():
                flagged.setdefault(k, np.zeros(len(texts), dtype=bool))[score_rows] = v
        timing["cross_fit_s"] = round(time.perf_counter() - t, 1)
        res.update({f"cross-fit, {k}": summary(v, flags, flipped) for k, v in flagged.items()})
        cells.append({"transform": transform, "seed": seed, "poisoned_rows": int(flags.sum()),
                      "flipped_rows": int((flags & flipped).sum()), "rows": len(train),
                      "clean_rows": len(clean), "timing": timing, "candidates": res})
        print(json.dumps({"transform": transform, "seed": seed, **timing,
                          **{k: (v["recall"], v["honest_dropped"]) for k, v in res.items()}}), flush=True)
    names = list(cells[0]["candidates"])
    score = {k: float(np.mean([c["candidates"][k]["recall"] - c["candidates"][k]["honest_dropped"] for c in cells]))
             for k in names}
    chosen = max(names, key=lambda k: (score[k], -names.index(k)))
    adopt = all(c["candidates"][chosen]["recall"] >= MIN_RECALL and c["candidates"][chosen]["honest_dropped"] <= MAX_HONEST
                for c in cells)
    command = (f"python benchmarks/probes/victim_shift_probe.py --transforms {' '.join(args.transforms)} --seeds "
               f"{' '.join(map(str, args.seeds))} --out {args.out}")
    result = {"setting": {**main_job.setting(), "attack": "style (mixed, rate 0.1, target 1)",
                          "alpha": 0.05, "rule": {"min_recall": MIN_RECALL, "max_honest_dropped": MAX_HONEST}},
              "cells": cells, "score": score, "chosen": chosen, "adopted": adopt, "threads": threads,
              "provenance": provenance(command, time.perf_counter() - t0)}
    write_text_atomic(args.out / "probe.json", json.dumps(result, indent=1) + "\n")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    lines = ["| candidate | " + " | ".join(
        f"{c['transform']} s{c['seed']}: recall (flipped / clean-label) / honest dropped" for c in cells)
        + " | score |", "|---|" + "---|" * (len(cells) + 1)]
    for k in names:
        lines.append(f"| {k}{' (chosen)' if k == chosen else ''} | " + " | ".join(
            f"{pct(c['candidates'][k]['recall'])} ({pct(c['candidates'][k]['recall_flipped'])} / "
            f"{pct(c['candidates'][k]['recall_clean_label'])}) / {pct(c['candidates'][k]['honest_dropped'])}"
            for c in cells) + f" | {score[k]:.3f} |")
    lines.append(f"\nchosen: {chosen}; adopted as version 5's guard: {'yes' if adopt else 'no'} "
                 f"(needs recall >= {MIN_RECALL:.0%} and honest dropped <= {MAX_HONEST:.0%} on every cell)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
