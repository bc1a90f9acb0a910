#!/usr/bin/env bash
# The grid of a GPU session (issues 11 and 12), as one prepared script for a rented machine with a
# deadline: several `bench run` processes per phase share one results folder through bench's claims
# (each cell runs once), so one GPU is kept busy by many small MiniLM trainings.
#
#   benchmarks/gpu/gpu_grid.sh OUTDIR SECONDS [WORKERS]
#
# Phases, in order (a worker moves to the next phase once every cell of its phase is done or claimed):
#   1. tuning (README "Tuning protocol"): AG News, dirty-label BadNets, seed 1, cpu profile, 2000 test rows;
#      `none` and musclelora/ga/ga-lora at the four declared (reference_size, ga_epoch) candidates
#      -> OUTDIR/tuning; benchmarks/tuning_choice.py applies the declared rule and gives the family's settings
#   2. the leaderboard grid (-> OUTDIR/grid): sst2 and hsol x 5 attacks x every defense but ONION (its SmolLM2
#      scorer is not on the machine) x seed 1, then seeds 2 and 3; cpu profile on the main job's 1500
#      training rows, the full test sets, fp32 (the CPU's numerics: no bf16 autocast), no stealth scoring
#   3. the paper profile (-> OUTDIR/paper): sst2 x badnets, addsent x none, lora, musclelora, seed 1
# Every worker stops at the deadline (SECONDS from now); finished cells are records, the rest is simply
# not there (rerun the script to resume). BENCH_GRID_BACKBONE and BENCH_GRID_EXTRA (extra --set arguments)
# exist for a local dry run with a tiny model; BENCH_GRID_PRUNE_MIN=N deletes cached victims older than N
# minutes (a MiniLM victim is 90 MB on disk; a later cell that needs a deleted one trains it again).
# On a machine that got a copy of the tree, export BENCH_SOURCE_COMMIT (and BENCH_SOURCE_DIRTY=0) so the
# records name the commit the copy was made from (a copied .git may be stale).
set -u
OUTDIR=$1
DEADLINE=$(( $(date +%s) + $2 ))
W=${3:-14}
BACKBONE=${BENCH_GRID_BACKBONE:-minilm}
EXTRA=${BENCH_GRID_EXTRA:-}
export BENCH_THREADS=${BENCH_THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR/logs"
if [ -n "${BENCH_GRID_PRUNE_MIN:-}" ]; then  # a small disk: drop cached victims older than this many minutes
  (while sleep 15; do find "${BENCH_CACHE_DIR:?}/victims" -mindepth 1 -maxdepth 1 -type d \
     -mmin +"$BENCH_GRID_PRUNE_MIN" -exec rm -rf {} + 2>/dev/null; done) &
  PRUNER=$!
fi
RUN="python3 -m bench.cli run -b $BACKBONE --no-progress --keep-going"
GPU="--set profile.precision=fp32 --set profile.stealth_samples=0"
DEFENSES="-d none -d strip -d rap -d badacts -d lora -d mslr -d ga -d ga-lora -d musclelora -d adapter -d prefix
 -d moderate-fitting -d dpoe -d btu -d bki -d cube -d zdefense -d clean-only -d none+clean"
ATTACKS="-a badnets -a addsent -a syntactic -a style -a hiddenkiller"

left() { echo $(( DEADLINE - $(date +%s) )); }

# workers N NAME ARGS...: N processes of one bench run, each stopped at the deadline
workers() {
  local n=$1 name=$2; shift 2
  for i in $(seq "$n"); do
    (t=$(left); [ "$t" -gt 5 ] && timeout -s INT "$t" $RUN "$@" >>"$OUTDIR/logs/$name-$i.log" 2>&1) &
    PIDS="$PIDS $!"
  done
}

PIDS=""
# 1. tuning: none + 4 candidates x 3 defenses, each candidate's 3 cells split by 3 workers
TUNE="-a badnets --label-regime dirty --dataset agnews -s 1 $GPU --set profile.test_size=2000 $EXTRA --out $OUTDIR/tuning"
workers 1 tune-none $TUNE -d none
for cand in 384:0 96:1 96:0 384:1; do
  r=${cand%:*}; e=${cand#*:}
  sets=""
  for d in musclelora ga ga-lora; do sets="$sets --set $d.reference_size=$r --set $d.ga_epoch=$e"; done
  workers 3 "tune-$r-$e" $TUNE -d musclelora -d ga -d ga-lora $sets
done
wait $PIDS
PIDS=""
FAMILY=$(python3 benchmarks/tuning_choice.py "$OUTDIR/tuning")
echo "family settings (declared rule): $FAMILY" | tee "$OUTDIR/logs/choice.txt"

# 2 and 3: every worker walks the phases in order
GRID="$ATTACKS $DEFENSES $GPU --set profile.train_size=1500 $FAMILY $EXTRA --out $OUTDIR/grid"
PAPER="--profile paper -a badnets -a addsent --dataset sst2 -s 1 -d none -d lora -d musclelora $GPU $EXTRA --out $OUTDIR/paper"
for i in $(seq "$W"); do
  (
    for phase in "--dataset sst2 -s 1" "--dataset hsol -s 1" "--dataset sst2 -s 2 -s 3" "--dataset hsol -s 2 -s 3"; do
      t=$(left); [ "$t" -gt 5 ] || exit 0
      timeout -s INT "$t" $RUN $phase $GRID >>"$OUTDIR/logs/grid-$i.log" 2>&1
    done
    t=$(left); [ "$t" -gt 5 ] && timeout -s INT "$t" $RUN $PAPER >>"$OUTDIR/logs/paper-$i.log" 2>&1
  ) &
  PIDS="$PIDS $!"
done
wait $PIDS
[ -n "${PRUNER:-}" ] && kill "$PRUNER"
echo "grid script done at $(date -u +%FT%TZ), $(left) s before the deadline"
