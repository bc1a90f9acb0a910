#!/usr/bin/env bash
# Issue 24 on a lent GPU: the fidelity run on the WHOLE training set and the setting matrix at 3 seeds,
# as one prepared script for a machine with a deadline. Several `bench run` processes per phase share
# one results folder through bench's claims (each cell runs once).
#
#   benchmarks/gpu/gpu_matrix.sh OUTDIR SECONDS [WORKERS]
#
# Every cell: SST-2, MiniLM, cpu profile, the FULL clean test set (1,821 rows; the CPU runs use a 300-row
# slice), fp32, no stealth scoring. Phases, in order (a worker moves on once every cell of a phase is done
# or claimed by another worker):
#   1. OUTDIR/fidelity-whole: the papers' attack (dirty label, 1 trigger, rate 0.1) on the whole training
#      set (6,920 rows), seeds 1-3, every baseline of docs/fidelity.md but ONION (its scorer is not carried)
#      with `none` and `clean-only`: does a baseline that misses at 1,500 rows work with more data?
#   2. OUTDIR/matrix: the main job's point (clean label, 4 triggers, rate 0.1, 1,500 rows) and one factor
#      changed at a time (1 trigger; dirty label; rate 0.01/0.05/0.2; the whole training set), for the
#      nine defenses of issue 24 but ONION; seed 1 first, then seeds 2 and 3.
# Every worker stops at the deadline (SECONDS from now); finished cells are records, the rest is not there
# (rerun to resume). BENCH_GRID_BACKBONE / BENCH_GRID_EXTRA: a local dry run with a tiny model.
# On a machine that got a copy of the tree, export BENCH_SOURCE_COMMIT (and BENCH_SOURCE_DIRTY=0).
set -u
source "$(dirname "$0")/workers.sh"
init_workers "$1" "$2" "${3:-}" 15
RUN="python3 -m bench.cli run --main -b $BACKBONE --no-progress --keep-going"
COMMON="--set profile.test_size=None --set profile.precision=fp32 --set profile.stealth_samples=0 $EXTRA"
FID_DEFS="-d none -d clean-only -d strip -d rap -d badacts -d bki -d cube -d zdefense -d dpoe -d btu -d lora -d musclelora"
MAT_DEFS="-d none -d clean-only -d bki -d zdefense -d cube -d strip -d rap -d badacts -d musclelora"
FID="$FID_DEFS --label-regime dirty --set badnets.num_triggers=1 --set profile.train_size=None $COMMON --out $OUTDIR/fidelity-whole"
M="$MAT_DEFS $COMMON --out $OUTDIR/matrix"
matrix_phases() {  # the matrix for the seeds given
  local s=$1
  echo "$s $M"
  echo "$s $M --set badnets.num_triggers=1"
  echo "$s $M --label-regime dirty"
  echo "$s $M --sweep badnets.poison_rate=0.01,0.05,0.2"
  echo "$s $M --set profile.train_size=None"
}
PHASES=()
PHASES+=("-s 1 -s 2 -s 3 $FID")
while IFS= read -r p; do PHASES+=("$p"); done < <(matrix_phases "-s 1"; matrix_phases "-s 2 -s 3")
run_workers
echo "matrix script done at $(date -u +%FT%TZ), $(left) s before the deadline"
