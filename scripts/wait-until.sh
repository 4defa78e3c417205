# Sourced by the set-up scripts: wait_until SECONDS WHAT COMMAND... polls COMMAND every 0.2 s until it
# succeeds; otherwise says (through the caller's `log`) that WHAT did not come up, and fails.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    "$@" && return 0
    sleep 0.2
  done
  log "$what did not come up within ${seconds}s"
  return 1
}
