# Sourced by the GPU scripts (gpu_matrix.sh, gpu_knowledge.sh, gpu_wholeset.sh): W workers each walk the phases in
# order, running `$RUN PHASE` until the deadline; bench's claims split the cells between them.
#   run_workers needs: DEADLINE (epoch seconds), W, OUTDIR (init_workers sets these), RUN and the array PHASES
# init_workers OUTDIR SECONDS [WORKERS] DEFAULT_WORKERS: the scripts' shared arguments and environment.
init_workers() {
  OUTDIR=$1
  DEADLINE=$(( $(date +%s) + $2 ))
  W=${3:-$4}
  BACKBONE=${BENCH_GRID_BACKBONE:-minilm}
  EXTRA=${BENCH_GRID_EXTRA:-}
  export BENCH_THREADS=${BENCH_THREADS:-1} PYTHONUNBUFFERED=1
  mkdir -p "$OUTDIR/logs"
}

left() { echo $(( DEADLINE - $(date +%s) )); }

run_workers() {
  local pids="" i
  for i in $(seq "$W"); do
    (
      for phase in "${PHASES[@]}"; do
        t=$(left); [ "$t" -gt 5 ] || exit 0
        timeout -s INT "$t" $RUN $phase >>"$OUTDIR/logs/worker-$i.log" 2>&1
      done
    ) &
    pids="$pids $!"
    sleep 0.3  # staggered starts: the first cells' claims are taken one by one
  done
  wait $pids
}
