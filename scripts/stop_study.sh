#!/bin/bash
# Stops the CPU study started by scripts/run_study.sh (or run_budget.sh, run_new_techniques.sh)
# so that it can be committed: the driver first (nothing new starts), then each sweep with
# SIGTERM (its runs go back to pending and resume from their last checkpoint, at most a tenth
# of a run ago), one-shot pruning (its finished rows are stored; the one in progress is done
# again) and retraining (it resumes from its checkpoint), then each store's WAL is folded into
# the .db file, which is what git sees.
#   bash scripts/stop_study.sh && git add results/study/*.db
set -uo pipefail
cd "$(dirname "$0")/.."
pkill -KILL -f "scripts/run_(study|budget|new_techniques).sh"  # SIGKILL: run_study.sh's trap would run the report
workers="sparsebench (sweep|one-shot)|scripts/retrain_lost_runs.py"
pkill -TERM -f "$workers"
# A worker paused with SIGSTOP (as for a benchmark) acts on SIGTERM only once continued.
pkill -CONT -f "$workers"
for _ in $(seq 90); do
  pgrep -f "$workers" > /dev/null || break
  sleep 2
done
if pgrep -fa "$workers"; then
  echo "sweeps still running after 3 minutes; not touching the stores" >&2
  exit 1
fi
# Whether a process has the store or its WAL open (its file descriptors, in /proc).
_open_elsewhere() {
  local target
  for target in "$(realpath "$1")" "$(realpath -m "$1-wal")"; do
    if find /proc/[0-9]*/fd -lname "$target" 2>/dev/null | grep -q .; then return 0; fi
  done
  return 1
}
for db in results/study/*.db; do
  python3 - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
counts = db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
db.close()
print(sys.argv[1] + ": " + ", ".join(f"{n} {s}" for s, n in counts))
PY
  # Leftovers of a clean close: with no process on the store and an empty WAL, the -shm
  # index holds nothing either. A non-empty WAL would hold data, so then both stay. Another
  # process with the store open (a Python session, a command this script does not stop) keeps
  # writing into the WAL it has open: deleting it lost that process's rows (session 12).
  if [ ! -s "$db-wal" ] && ! _open_elsewhere "$db"; then rm -f "$db-wal" "$db-shm"; fi
done
exit 0
