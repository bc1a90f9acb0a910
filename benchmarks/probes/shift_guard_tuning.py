"""Can a training-vs-clean shift guard find a style trigger? (issue 25, `distill` version 5, withdrawn)

    python benchmarks/probes/shift_guard_tuning.py --transforms poetry shakespeare --seeds 1 \
        --out results/probes/shift-guard-tuning

Version 5 of `distill` was to drop the training rows that sit apart from the defender's clean rows (a
sample of the same distribution) in a frozen pretrained backbone: a trigger that is not a word (a style,
a syntax template) is a shift of the training set, which the word guard of version 3 cannot see. This
probe measures, before any version 5 cell ran, whether such a guard finds the poisoned rows at all,
for two guard forms and several representations:

- `knn`: a row's score is the share of training rows among its 20 nearest other rows (cosine) in the
  pooled training and clean rows; training rows above the clean rows' 0.95 quantile are dropped (the
  declared version 5 rule);
- `logistic`: a logistic regression separating training rows from clean rows, cross-fitted over 5
  folds; training rows whose out-of-fold score exceeds the clean rows' 0.95 quantile are dropped.

Representations: the frozen MiniLM's layer 0 (embeddings output), middle layer and last layer, pooled
by the first token or the mean over tokens; for `logistic` also character 2-4-gram TF-IDF (the surface).

Tuning set: SST-2 StyleBkd with the **poetry** and **shakespeare** transforms (mixed label, rate 0.1,
target 1, the main job's 1,500 training rows and 384 clean rows), which no headline table holds (they
use the Bible transform). Only training rows are read, split by the attack's own flags (an analysis, not
a defense input); no model is trained and no test row is read. Per candidate: the share of poisoned rows
dropped (recall) and of honest rows dropped. Rule fixed before the run: the candidate with the highest
mean of (recall - honest share dropped); it would become version 5's setting if it finds most of the
poison. Writes ``OUT/probe.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.models.hardware import configure_threads
from bench.models.training import Encoded
from bench.reporting.results import provenance, write_text_atomic
from main_job_cell import MainJobCells

K, ALPHA, FOLDS = 20, 0.05, 5


POOLINGS = ("first", "mean")


@torch.no_grad()
def pooled_states(model, tokenizer, texts, max_length, batch_size, layers):
    """{(layer, pooling): one state per text} from one forward pass: the first token's state or the
    mean over the text's tokens."""
    enc = Encoded(tokenizer, list(texts), None, max_length)
    out = {(layer, pooling): np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
           for pooling in POOLINGS for layer in layers}
    order = np.argsort([len(f["input_ids"]) for f in enc.features], kind="stable")
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = enc.batch(idx, torch.device("cpu"))
        hidden = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        for layer in layers:
            h = hidden[layer].float()
            out[(layer, "first")][idx] = h[:, 0].numpy()
            out[(layer, "mean")][idx] = ((h * mask).sum(1) / mask.sum(1)).numpy()
    return out


def knn_scores(train_x, clean_x):
    """Each row's share of training rows among its K nearest other rows (cosine)."""
    x = np.concatenate([train_x, clean_x]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    is_train = np.arange(len(x)) < len(train_x)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argpartition(-sim, K - 1, axis=1)[:, :K]
    return is_train[nearest].mean(1)


def logistic_scores(train_x, clean_x):
    """Out-of-fold decision scores of a training-vs-clean logistic regression."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sparse = sp.issparse(train_x)
    x = sp.vstack([train_x, clean_x]).tocsr() if sparse else np.concatenate([train_x, clean_x])
    y = np.r_[np.ones(train_x.shape[0]), np.zeros(clean_x.shape[0])].astype(int)
    score = np.zeros(len(y))
    for fit_idx, out_idx in StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
        lr = LogisticRegression(max_iter=3000, class_weight="balanced")
        clf = lr if sparse else make_pipeline(StandardScaler(), lr)
        clf.fit(x[fit_idx], y[fit_idx])
        score[out_idx] = clf.decision_function(x[out_idx])
    return score


def dropped(score, n_train):
    bar = np.quantile(score[n_train:], 1 - ALPHA)
    return score[:n_train] > bar


def tuning_setup(argv: list[str] | None, doc: str, out: str):
    """A probe on the declared style tuning set: its arguments (transforms, seeds, output folder), its
    start time, the torch threads it uses and the main job's cells on SST-2."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--transforms", nargs="+", default=["poetry", "shakespeare"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--out", type=Path, default=Path(out))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    return args, t0, configure_threads()["threads"], MainJobCells("sst2")


def tuning_cells(main_job: MainJobCells, args: argparse.Namespace):
    """(transform, seed, poisoned training rows, clean rows, defense context) of each declared tuning
    cell: SST-2 StyleBkd with one transform, at the main job's setting."""
    for transform in args.transforms:
        for seed in args.seeds:
            _, prep, ctx = main_job.cell("style", "distill", seed, {"style": {"transform": transform}})
            yield transform, seed, prep.poisoned.train, ctx.clean(), ctx


def main(argv: list[str] | None = None) -> str:
    args, t0, threads, main_job = tuning_setup(argv, __doc__, "results/probes/shift-guard-tuning")
    prof = main_job.profile
    cells = []
    for transform, seed, train, clean, ctx in tuning_cells(main_job, args):
        texts = list(train["text"])
        flags = np.asarray(train["poisoned"]) == 1
        loaded = ctx.backbone()
        layers = [0, loaded.model.config.num_hidden_layers // 2, -1]
        tr, cl = (pooled_states(loaded.model, loaded.tokenizer, t, prof.max_length, prof.eval_batch_size, layers)
                  for t in (texts, list(clean["text"])))
        reps = {f"layer {layer}, {pooling}": (tr[(layer, pooling)], cl[(layer, pooling)])
                for pooling in POOLINGS for layer in layers}
        res = {}
        for name, (a, b) in reps.items():
            for method, fn in (("knn", knn_scores), ("logistic", logistic_scores)):
                flagged = dropped(fn(a, b), len(a))
                res[f"{method}: {name}"] = {"recall": round(float(flagged[flags].mean()), 4),
                                            "honest_dropped": round(float(flagged[~flags].mean()), 4)}
        from sklearn.feature_extraction.text import TfidfVectorizer

        grams = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=3, sublinear_tf=True)
        x = grams.fit_transform(texts + list(clean["text"]))
        flagged = dropped(logistic_scores(x[:len(texts)], x[len(texts):]), len(texts))
        res["logistic: char 2-4-grams"] = {"recall": round(float(flagged[flags].mean()), 4),
                                           "honest_dropped": round(float(flagged[~flags].mean()), 4)}
        cells.append({"transform": transform, "seed": seed, "poisoned_rows": int(flags.sum()),
                      "rows": len(train), "clean_rows": len(clean), "candidates": res})
        print(json.dumps({"transform": transform, "seed": seed,
                          **{k: (v["recall"], v["honest_dropped"]) for k, v in res.items()}}), flush=True)
    names = list(cells[0]["candidates"])
    score = {k: float(np.mean([c["candidates"][k]["recall"] - c["candidates"][k]["honest_dropped"] for c in cells]))
             for k in names}
    chosen = max(names, key=lambda k: (score[k], -names.index(k)))
    command = (f"python benchmarks/probes/shift_guard_tuning.py --transforms {' '.join(args.transforms)} --seeds "
               f"{' '.join(map(str, args.seeds))} --out {args.out}")
    result = {"setting": {**main_job.setting(), "attack": "style (mixed, rate 0.1, target 1)",
                          "k": K, "alpha": ALPHA, "folds": FOLDS},
              "cells": cells, "score": score, "chosen": chosen, "threads": threads,
              "provenance": provenance(command, time.perf_counter() - t0)}
    write_text_atomic(args.out / "probe.json", json.dumps(result, indent=1) + "\n")
    lines = ["| candidate | " + " | ".join(f"{c['transform']} s{c['seed']}: recall / honest dropped" for c in cells)
             + " | score |", "|---|" + "---|" * (len(cells) + 1)]
    for k in names:
        lines.append(f"| {k}{' (chosen)' if k == chosen else ''} | " + " | ".join(
            f"{100 * c['candidates'][k]['recall']:.1f} / {100 * c['candidates'][k]['honest_dropped']:.1f}" for c in cells)
            + f" | {score[k]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
