# Sourced by the GPU scripts (gpu_matrix.sh, gpu_knowledge.sh): W workers each walk the phases in order,
# running `$RUN PHASE` until the deadline; bench's claims split the cells between them.
#   needs: DEADLINE (epoch seconds), W, RUN, OUTDIR, and the array PHASES
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
