#!/usr/bin/env bash
# Issue 13 on a lent GPU: the MuScleLoRA release's poisoned data against our own attacks under `none`
# on the WHOLE training set, seeds 1-3 (the CPU ran seed 1 only), then the release and ours through the
# defenses on the whole training set, seed 1. Several `bench` processes share each results folder through
# bench's claims (each cell runs once), so one GPU is kept busy by many small MiniLM trainings.
#
#   benchmarks/gpu/gpu_release.sh OUTDIR SECONDS [WORKERS]
#
# Phases, in order (a worker moves on once every cell of a phase is done or claimed by another worker):
#   1-2. SST-2: the release's four attacks, then ours (badnets, addsent, style, syntactic), `none`, seeds 1-3
#   3-4. HSOL: the same
#   5-6. SST-2: the release, then ours, through lora, bki, zdefense, musclelora, seed 1
# Everything: MiniLM, cpu profile with profile.train_size=None (the whole training set), the full test
# sets, fp32, no stealth scoring (its scorer LM is not on the machine). -> OUTDIR/none-seeds, OUTDIR/defenses.
# Every worker stops at the deadline (SECONDS from now); finished cells are records, the rest is not there
# (rerun to resume). BENCH_GRID_BACKBONE / BENCH_GRID_EXTRA: a local dry run with a tiny model.
# On a machine that got a copy of the tree, export BENCH_SOURCE_COMMIT (and BENCH_SOURCE_DIRTY=0).
set -u
OUTDIR=$1
DEADLINE=$(( $(date +%s) + $2 ))
W=${3:-12}
BACKBONE=${BENCH_GRID_BACKBONE:-minilm}
EXTRA=${BENCH_GRID_EXTRA:-}
export BENCH_THREADS=${BENCH_THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR/logs"
COMMON="-b $BACKBONE --no-progress --set profile.train_size=None --set profile.precision=fp32 --set profile.stealth_samples=0 $EXTRA"
REL="python3 -m bench.cli musclelora-release $COMMON"
OURS="python3 -m bench.cli run --keep-going -a badnets -a addsent -a style -a syntactic $COMMON"
SEEDS="-s 1 -s 2 -s 3"
DEFS="-d lora -d bki -d zdefense -d musclelora"
PHASES=(
  "$REL --dataset sst2 -d none $SEEDS --out $OUTDIR/none-seeds"
  "$OURS --dataset sst2 -d none $SEEDS --out $OUTDIR/none-seeds"
  "$REL --dataset hsol -d none $SEEDS --out $OUTDIR/none-seeds"
  "$OURS --dataset hsol -d none $SEEDS --out $OUTDIR/none-seeds"
  "$REL --dataset sst2 $DEFS -s 1 --out $OUTDIR/defenses"
  "$OURS --dataset sst2 $DEFS -s 1 --out $OUTDIR/defenses"
)
left() { echo $(( DEADLINE - $(date +%s) )); }
PIDS=""
for i in $(seq "$W"); do
  (
    for phase in "${PHASES[@]}"; do
      t=$(left); [ "$t" -gt 5 ] || exit 0
      echo "== $(date -u +%T) $phase" >>"$OUTDIR/logs/worker-$i.log"
      timeout -s INT "$t" $phase >>"$OUTDIR/logs/worker-$i.log" 2>&1
    done
  ) &
  PIDS="$PIDS $!"
  sleep 1  # staggered starts: claims are taken in order, not all at the same instant
done
wait $PIDS
echo "release script done at $(date -u +%FT%TZ), $(left) s before the deadline"
