#!/bin/bash
# The defender-knowledge curve of issue 25: each clean-data defense at every clean budget, beside `none`.
#
#   benchmarks/knowledge_curve.sh OUT [DATASET...]        (default datasets: sst2 hsol)
#   env: SEEDS=3  BUDGETS=48,96,192,384  CLEAN_SIZE=384  ATTACKS="badnets addsent hiddenkiller"
#        DEFENSES="clean-only none+clean musclelora distill"  BENCH="bench"  DRY=1 (print, do not run)
#        anything else for `bench run` in EXTRA (e.g. EXTRA="--data-dir ../shared/data --keep-going")
#
# Each defense's own budget knob is swept (clean-only.n_clean, none+clean.n_clean, distill.n_clean,
# musclelora.reference_size) at ONE profile.clean_size, so every point chooses its model on the same clean
# dev rows. CLEAN_SIZE=384 keeps the main job's selection rows (its 384-row points train on the rows the main setting uses, keyed apart);
# a 768-row point needs CLEAN_SIZE=768 (SST-2 only: HSOL's dev has 582 rows), which leaves 104 SST-2
# selection rows and is a different setting: run it into its own OUT. Resumable: rerun the same command.
# Read it with `bench table curve OUT DATASET --plot OUT/curve-DATASET.png`.
set -euo pipefail
OUT=${1:?usage: benchmarks/knowledge_curve.sh OUT [DATASET...]}; shift
DATASETS=${*:-sst2 hsol}
SEEDS=${SEEDS:-3}; BUDGETS=${BUDGETS:-48,96,192,384}; CLEAN_SIZE=${CLEAN_SIZE:-384}
ATTACKS=${ATTACKS:-badnets addsent hiddenkiller}
DEFENSES=${DEFENSES:-clean-only none+clean musclelora distill}
BENCH=${BENCH:-bench}
knob() { case $1 in musclelora) echo "musclelora.reference_size";; *) echo "$1.n_clean";; esac; }
run() { echo "+ $*"; [ -n "${DRY:-}" ] || "$@"; }
for d in $DATASETS; do
  for a in $ATTACKS; do
    common=(--main --dataset "$d" --attack "$a" --seeds "$SEEDS" --set "profile.clean_size=$CLEAN_SIZE" --out "$OUT" --no-progress)
    # shellcheck disable=SC2086
    run $BENCH run "${common[@]}" --defense none ${EXTRA:-}
    for def in $DEFENSES; do
      # shellcheck disable=SC2086
      run $BENCH run "${common[@]}" --defense "$def" --sweep "$(knob "$def")=$BUDGETS" ${EXTRA:-}
    done
  done
done
