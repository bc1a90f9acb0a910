#!/usr/bin/env bash
# Issue 25's defender-knowledge curve on a lent GPU, as one prepared script (not run yet; written in session 14).
#
#   benchmarks/gpu/gpu_knowledge.sh OUTDIR SECONDS [WORKERS]
#
# For each clean budget B in 48 96 192 384 768: `clean-only`, `musclelora`, `none+clean` and `distill` given B
# clean rows (clean-only.n_clean / musclelora.reference_size / none+clean.n_clean / distill.n_clean), beside
# `none`; SST-2 then HSOL; BadNets, AddSent, HiddenKiller; the main job's setting (cpu profile, 1,500 rows),
# the full test set, fp32, no stealth scoring; seed 1 first, then seeds 2 and 3. Every cell of the curve
# holds one profile.clean_size (the largest budget), so the model-selection rows are the same for every
# budget and defense: 768 on SST-2 (its 872 dev rows leave 104 for selection: say so beside the plot),
# 384 on HSOL, whose 582 dev rows cannot give 768 (its curve stops at 384 and selects on 198 rows).
# Read it with `bench table curve OUTDIR DATASET --plot OUTDIR/curve-DATASET.png`. On a CPU: W=1 and a
# deadline of hours (each cell as in docs/cost.md).
# `bench run --sweep` gives each budget its own keyed cell. Workers share OUTDIR through claims; each
# stops at the deadline (rerun to resume). BENCH_GRID_BACKBONE / BENCH_GRID_EXTRA: a local dry run.
# On a copied tree, export BENCH_SOURCE_COMMIT (and BENCH_SOURCE_DIRTY=0).
set -u
source "$(dirname "$0")/workers.sh"
init_workers "$1" "$2" "${3:-}" 15
BUDGETS=${BENCH_BUDGETS:-48,96,192,384,768}  # SST-2's; HSOL's stop at 384 (below)
RUN="python3 -m bench.cli run --main -b $BACKBONE --no-progress --keep-going -a badnets -a addsent -a hiddenkiller"
PHASES=()
for seeds in "-s 1" "-s 2 -s 3"; do
  for ds in sst2 hsol; do
    if [ "$ds" = hsol ]; then B=${BUDGETS%,768}; SIZE=384; else B=$BUDGETS; SIZE=${BUDGETS##*,}; fi
    COMMON="--set profile.clean_size=$SIZE --set profile.test_size=None --set profile.precision=fp32 --set profile.stealth_samples=0 $EXTRA --out $OUTDIR"
    PHASES+=("--dataset $ds $seeds -d none $COMMON")
    PHASES+=("--dataset $ds $seeds -d clean-only --sweep clean-only.n_clean=$B $COMMON")
    PHASES+=("--dataset $ds $seeds -d distill --sweep distill.n_clean=$B $COMMON")
    PHASES+=("--dataset $ds $seeds -d musclelora --sweep musclelora.reference_size=$B $COMMON")
    PHASES+=("--dataset $ds $seeds -d none+clean --sweep none+clean.n_clean=$B $COMMON")
  done
done
run_workers
echo "knowledge script done at $(date -u +%FT%TZ), $(left) s before the deadline"
