# Helpers for the build scripts: run parts side by side, each logging to its own file,
# then report each part's seconds and, when one fails, its log.
# start_part LABEL FUNCTION [ARGS...]; wait_parts (exit 1 when a part failed).
# Needs $work (a scratch directory).
_parts=()
start_part() {
  local label=$1 n=${#_parts[@]}
  shift
  echo "start: $label"
  ( SECONDS=0; "$@"; rc=$?; echo "$SECONDS" > "$work/part-$n.seconds"; exit $rc ) \
    > "$work/part-$n.log" 2>&1 &
  _parts+=("$!:$label")
}
wait_parts() {
  local entry pid label n=0 failed=0
  for entry in "${_parts[@]}"; do
    pid=${entry%%:*} label=${entry#*:}
    if wait "$pid"; then
      echo "built: $label in $(cat "$work/part-$n.seconds")s"
    else
      failed=1
      echo "FAILED: $label; its output:"
      cat "$work/part-$n.log"
    fi
    n=$((n + 1))
  done
  _parts=()
  return $failed
}
