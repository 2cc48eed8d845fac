#!/usr/bin/env bash
# Time the 10^6 query phase of bench_population_index.py with other CPU jobs paused around the timed loop only.
#
#   bench/quiet_queries.sh KEPT_DIR [PIDS_FILE] [-- BENCH_ARGS...]
#
# KEPT_DIR: made by `bench_population_index.py --stage stream --n 1000000 --keep KEPT_DIR`. The bench loads it
# (not paused), warms up and waits at its gate; then the PIDs listed in PIDS_FILE (default /tmp/bgjobs.pids,
# re-read right before) get SIGSTOP, SETTLE_S seconds pass (default 20: the run queue drains), the 1,000 timed
# queries run, and the jobs get SIGCONT as soon as the timed loop ends, after PAUSE_LIMIT_S (default 100) at
# the latest, and in every case on exit (trap). Afterwards no listed PID may be left stopped (checked).
set -u
kept=${1:?usage: bench/quiet_queries.sh KEPT_DIR [PIDS_FILE] [-- BENCH_ARGS...]}
shift
pids_file=/tmp/bgjobs.pids
if [ $# -gt 0 ] && [ "$1" != "--" ]; then pids_file=$1; shift; fi
[ "${1:-}" = "--" ] && shift
settle=${SETTLE_S:-20}
limit=${PAUSE_LIMIT_S:-100}
python=${PYTHON:-python}
n=${N:-1000000}
here=$(cd "$(dirname "$0")/.." && pwd)
gate=$(mktemp -u /tmp/quiet-gate.XXXXXX)
paused=""
bench=""

resume() {
  if [ -n "$paused" ]; then kill -CONT $paused 2>/dev/null; fi
  kill -CONT $(cat "$pids_file" 2>/dev/null) 2>/dev/null
  paused=""
}
# resume first, whatever happens; then stop a bench still waiting at its gate
trap 'resume; [ -n "$bench" ] && kill "$bench" 2>/dev/null; rm -f "$gate".*' EXIT
trap 'exit 130' INT TERM

"$python" "$here/bench/bench_population_index.py" --stage stream --n "$n" --reuse "$kept" --gate "$gate" "$@" &
bench=$!
while [ ! -e "$gate.ready" ]; do
  kill -0 "$bench" 2>/dev/null || { wait "$bench"; exit $?; }
  sleep 0.2
done
paused=$(cat "$pids_file" 2>/dev/null | tr '\n' ' ')
t0=$(date +%s.%N)
[ -n "$paused" ] && kill -STOP $paused 2>/dev/null
echo "quiet_queries: paused $paused; settling ${settle}s" >&2
sleep "$settle" & wait $!  # a signal interrupts `wait` (not a foreground sleep): the trap runs at once
touch "$gate.go"
while [ ! -e "$gate.done" ]; do
  kill -0 "$bench" 2>/dev/null || break
  awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && break
  sleep 0.05
done
resume
echo "quiet_queries: resumed after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >&2
for pid in $(cat "$pids_file" 2>/dev/null); do
  state=$(ps -o stat= -p "$pid" 2>/dev/null)
  case "$state" in T*) echo "quiet_queries: $pid still stopped ($state)" >&2; kill -CONT "$pid";; esac
done
wait "$bench"
status=$?
bench=""
exit $status
