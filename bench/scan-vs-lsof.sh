#!/usr/bin/env bash
# Finding unlinked open files: `snapckpt scan` against `lsof +L1`, on the process set of
# frozen-many.sh (100 processes in a cgroup v2, 1,000 unlinked files: 500 orphans with
# nlink 0, 500 name-gone files with nlink 1) on a loop btrfs.
#   snapckpt scan --cgroup CG            the cgroup's tasks
#   lsof -a +L1 -p PIDS                  lsof on the same 100 pids
#   snapckpt scan --all                  every process on the machine
#   lsof +L1                             every process on the machine
# Timed with hyperfine (apt package) when present, else a date +%s%N loop; output to
# /dev/null. `lsof +L1` selects only files with link count < 1: it cannot see the name-gone
# files (the counts of what each found are reported beside the times).
#
# Env: NPROC=100 NFILES=10 RUNS=20 WARMUP=3
# Output: $RESULTS_DIR/scan-vs-lsof.json (hyperfine's format), scan-vs-lsof-counts.txt, .md
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NPROC=${NPROC:-100}
NFILES=${NFILES:-10}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}

bench_init scan-vs-lsof
cd "$W"
command -v lsof >/dev/null || { apt-get install -y -q lsof >/dev/null || die "lsof is missing (apt-get install lsof)"; }
MANY=$(build_prog "$BENCH_DIR/progs/many.c")
mkfs_loop btrfs 2G "$W/fs"
mkdir -p "$W/fs/data"
make_cgroup
WORKLOAD_CGROUP=$CG start_workload "$W/many.log" "$MANY" "$W/fs/data" "$NPROC" "$NFILES"
PIDS=$(paste -sd, "$CG/cgroup.procs")

CMDS=(
  "$BIN scan --cgroup $CG"
  "lsof -a +L1 -p $PIDS"
  "$BIN scan --all"
  "lsof +L1"
)
LABELS=(
  "snapckpt scan --cgroup CG"
  "lsof -a +L1 -p <the 100 pids>"
  "snapckpt scan --all"
  "lsof +L1"
)

JSON=$RESULTS_DIR/scan-vs-lsof.json
if command -v hyperfine >/dev/null; then
  args=()
  for i in "${!CMDS[@]}"; do args+=(-n "${LABELS[$i]}" "${CMDS[$i]}"); done
  hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" -i --export-json "$JSON" "${args[@]}" >&2
  # hyperfine records the label as "command"; keep it so.
else
  log "no hyperfine: timing with a date +%s%N loop"
  python3 - "$JSON" "$RUNS" "$WARMUP" "${#CMDS[@]}" "${CMDS[@]}" "${LABELS[@]}" <<'EOF'
import json, subprocess, sys, time, statistics
out, runs, warm, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cmds, labels = sys.argv[5:5 + n], sys.argv[5 + n:5 + 2 * n]
res = []
for c, l in zip(cmds, labels):
    ts = []
    for i in range(warm + runs):
        t = time.perf_counter_ns()
        subprocess.run(c.split(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i >= warm:
            ts.append((time.perf_counter_ns() - t) / 1e9)
    res.append({"command": l, "mean": statistics.mean(ts), "median": statistics.median(ts), "min": min(ts), "max": max(ts), "times": ts})
json.dump({"results": res}, open(out, "w"), indent=1)
EOF
fi

# What each one found.
COUNTS=$RESULTS_DIR/scan-vs-lsof-counts.txt
count_scan() { "$BIN" scan "$@" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); o=d["objects"]; print(len(o), sum(1 for x in o if x.get("class")=="orphan"), sum(1 for x in o if x.get("class")=="name-gone"))'; }
count_lsof() { lsof -w "$@" 2>/dev/null | awk 'NR > 1' | wc -l; }
read -r sc_all sc_orph sc_gone <<< "$(count_scan --cgroup "$CG")"
read -r sa_all _ _ <<< "$(count_scan --all)"
{
  echo "Processes on the machine during the run: $(ls /proc | grep -c '^[0-9]') ($NPROC of them in the benchmark's cgroup, holding $((NPROC * NFILES)) unlinked files: $((NPROC * NFILES / 2)) orphans, $((NPROC * NFILES / 2)) name-gone)."
  echo "Found: \`snapckpt scan --cgroup\` $sc_all unlinked objects ($sc_orph orphan, $sc_gone name-gone); \`lsof -a +L1 -p <pids>\` $(count_lsof -a +L1 -p "$PIDS") lines (nlink 0 only); \`snapckpt scan --all\` $sa_all objects; \`lsof +L1\` $(count_lsof +L1) lines."
} > "$COUNTS"

python3 "$BENCH_DIR/summarize.py" scan-vs-lsof "$JSON" "$COUNTS" > "$RESULTS_DIR/scan-vs-lsof.md"
cat "$RESULTS_DIR/scan-vs-lsof.md"
