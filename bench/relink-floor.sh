#!/usr/bin/env bash
# The filesystem's own cost of what a take of frozen-many.sh's workload must do while the
# tasks are frozen, without snapckpt (bench/progs/dirfloor.c): on a loop btrfs, 500 orphans
# (64 KiB each, written, held open and unlinked) and 500 files with a second name, then,
# timed one step at a time, on 1 thread and on 2 (the relink's threads on 2 cores), with the
# orphans' data synced first (what snapckpt's write-back leaves before the freeze) and dirty
# (a sync a user would not run, left out: the clones and the commit then flush it):
#   clone   500 x (O_TMPFILE in one directory, FICLONE, futimens, linkat into it)
#   link    500 x linkat of a file into the same directory (the name-gone files' new names)
#   commit  one read-only btrfs snapshot (its transaction commit writes the new names; btrfs
#           also removes the 500 orphans from the new snapshot inside the same ioctl)
#   unlink  500 x unlinkat of the linked names (the names leading to the tasks' own inodes)
# No process is frozen and nothing is scanned: the sum is the floor under snapckpt's relink +
# snapshot + removal stages for 1,000 files in one checkpoint directory.
#
# Env: N=500 BYTES=65536 REPS=5 CACHES="synced dirty"
# Output: $RESULTS_DIR/relink-floor.csv, relink-floor.md
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=${N:-500}
BYTES=${BYTES:-65536}
REPS=${REPS:-5}
CACHES=${CACHES:-"synced dirty"}

bench_init relink-floor
cd "$W"
MNT=$W/fs
FLOOR=$(build_prog "$BENCH_DIR/progs/dirfloor.c")
mkfs_loop btrfs 4G "$MNT"
CSV=$RESULTS_DIR/relink-floor.csv
echo "cache,threads,rep,clone_ms,link_ms,commit_ms,unlink_ms,sum_ms" > "$CSV"

for rep in $(seq "$REPS"); do
  for cache in $CACHES; do
    for threads in 1 2; do
      if [ -d "$MNT/snap" ]; then btrfs subvolume delete "$MNT/snap" >/dev/null; fi
      rm -rf "${MNT:?}/src" "$MNT/other" "$MNT/ck"
      out=$("$FLOOR" "$MNT" "$N" "$BYTES" "$threads" $([ "$cache" = dirty ] && echo dirty))
      echo "$cache,$threads,$rep,$out,$(echo "$out" | awk -F, '{printf "%.1f", $1 + $2 + $3 + $4}')" >> "$CSV"
      btrfs subvolume delete "$MNT/snap" >/dev/null
    done
  done
  log "rep $rep: $(tail -4 "$CSV" | tr '\n' ' ')"
done

python3 - "$CSV" > "$RESULTS_DIR/relink-floor.md" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ["clone_ms", "link_ms", "commit_ms", "unlink_ms", "sum_ms"]
print("Medians, ms (min–max). 500 clones + 500 links into one directory, one snapshot, 500 unlinks.\n")
print("| orphans' data | threads | runs | " + " | ".join(c[:-3] for c in cols) + " |")
print("|---|---:|---:|" + "---:|" * len(cols))
for cache in dict.fromkeys(r["cache"] for r in rows):
    for th in ("1", "2"):
        rs = [r for r in rows if r["threads"] == th and r["cache"] == cache]
        cells = []
        for c in cols:
            v = [float(r[c]) for r in rs]
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})")
        print(f"| {cache} | {th} | {len(rs)} | " + " | ".join(cells) + " |")
EOF
cat "$RESULTS_DIR/relink-floor.md"
