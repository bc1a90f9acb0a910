#!/usr/bin/env bash
# Issue 25's whole-training-set cells on a lent GPU, as one prepared script (written in session 21; the
# BadNets and AddSent cells of both datasets were run on a CPU into results/whole-set with the same settings).
#
#   benchmarks/gpu/gpu_wholeset.sh OUTDIR SECONDS [WORKERS]
#
# `distill` (ours) beside `none`, `clean-only` (the 384 clean rows alone) and `musclelora` (the same rows as its
# reference) on the WHOLE training set (profile.train_size=None: SST-2 6,920 rows, HSOL 5,241), SST-2 then HSOL,
# the five attacks (BadNets, AddSent, StyleBkd, SynBkd, HiddenKiller) at their defaults, MiniLM, cpu profile
# otherwise, the full test set, fp32, no stealth scoring; seed 1 first, then seeds 2 and 3; `musclelora` last
# (its whole-set cells take 3-4.5 min on a GPU, half an hour on a CPU). Read with
# `bench table seeds OUTDIR DATASET ATTACK`. Workers share OUTDIR through claims; each stops at the deadline
# (rerun to resume). BENCH_GRID_BACKBONE / BENCH_GRID_EXTRA: a local dry run with a tiny model.
# On a copied tree, export BENCH_SOURCE_COMMIT (and BENCH_SOURCE_DIRTY=0).
set -u
source "$(dirname "$0")/workers.sh"
init_workers "$1" "$2" "${3:-}" 15
RUN="python3 -m bench.cli run --main -b $BACKBONE --no-progress --keep-going"
ATTACKS="-a badnets -a addsent -a style -a syntactic -a hiddenkiller"
COMMON="$ATTACKS --set profile.train_size=None --set profile.test_size=None --set profile.precision=fp32 --set profile.stealth_samples=0 $EXTRA --out $OUTDIR"
PHASES=()
for seeds in "-s 1" "-s 2 -s 3"; do
  for ds in sst2 hsol; do
    PHASES+=("--dataset $ds $seeds -d none -d clean-only -d distill $COMMON")
  done
done
for ds in sst2 hsol; do
  PHASES+=("--dataset $ds -s 1 -s 2 -s 3 -d musclelora $COMMON")
done
run_workers
echo "whole-set script done at $(date -u +%FT%TZ), $(left) s before the deadline"
