#!/usr/bin/env bash
# How long does a take keep many tasks frozen? 100 processes (one tree: bench/progs/many.c, a
# parent and 99 children) each holding 10 unlinked files (5 orphans of 64 KiB, 5 name-gone
# files), 1,000 in all, on a loop btrfs, in a cgroup v2. Then
#   snapckpt take --cgroup CG --engine none --snapshot btrfs   (REPS times on one tree; the
#                                     tasks are thawed and go on; each checkpoint is deleted)
#   snapckpt take --cgroup CG --engine criu --snapshot btrfs   (REPS times, a fresh tree each
#                                     time: CRIU kills it) + restart --snapshot --mount-root
# Stage timings from checkpoint.json (freeze/scan/relink/snapshot/dump/frozen), medians.
#
# Env: NPROC=100 NFILES=10 BYTES=65536 REPS=5 ENGINES="none criu"
# Output: $RESULTS_DIR/frozen-many.csv, frozen-many.md
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NPROC=${NPROC:-100}
NFILES=${NFILES:-10}
BYTES=${BYTES:-65536}
REPS=${REPS:-5}
ENGINES=${ENGINES:-"none criu"}

bench_init frozen-many
cd "$W"
MANY=$(build_prog "$BENCH_DIR/progs/many.c")
CSV=$RESULTS_DIR/frozen-many.csv
echo "engine,rep,take_ms,freeze_ms,scan_ms,relink_ms,snapshot_ms,dump_ms,frozen_ms,restart_ms,objects,tasks,status" > "$CSV"

MNT=$W/fs
IMG=$W/images
mkdir -p "$IMG" "$W/alt"   # restart --mount-root must exist
mkfs_loop btrfs 4G "$MNT"
make_cgroup

start_tree() {
  rm -rf "${MNT:?}/data"; mkdir -p "$MNT/data"
  WORKLOAD_CGROUP=$CG start_workload "$W/many.log" "$MANY" "$MNT/data" "$NPROC" "$NFILES" "$BYTES"
  local n; n=$(wc -l < "$CG/cgroup.procs")
  [ "$n" = "$NPROC" ] || die "expected $NPROC tasks in $CG, found $n"
}

objects_of() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(len(c["objects"]), len(c["tasks"]))' "$1/checkpoint.json"; }

take_once() {  # engine rep -> sets ID, row
  local engine=$1 rep=$2 t0 out take_ms
  t0=$(now_ns)
  if ! out=$("$BIN" take --cgroup "$CG" --engine "$engine" --snapshot btrfs --image-root "$IMG" --criu "$CRIU" 2>&1); then
    echo "$out" > "$RESULTS_DIR/frozen-many-$engine-error.txt"
    log "snapckpt take --engine $engine FAILED: $BIN take --cgroup $CG --engine $engine --snapshot btrfs --image-root $IMG"
    echo "$out" | tail -5 >&2
    echo "$engine,$rep,,,,,,,,,,,failed" >> "$CSV"
    ID=
    return 1
  fi
  take_ms=$(ms_since "$t0")
  ID=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
  _CKPTS+=("$IMG $ID")
  ROW="$engine,$rep,$take_ms,$(ckpt_timings "$IMG/$ID" | sed 's/[a-z_]*=//g; s/ /,/g')"
  OBJ=$(objects_of "$IMG/$ID" | tr ' ' ',')
  log "take --engine $engine #$rep: $take_ms ms; $(echo "$out" | grep '^  frozen' | sed 's/^ *//'); objects,tasks=$OBJ"
}

for engine in $ENGINES; do
  case $engine in
    none)
      start_tree
      for rep in $(seq "$REPS"); do
        take_once none "$rep" || continue
        echo "$ROW,,$OBJ,ok" >> "$CSV"
        "$BIN" delete "$ID" --force --image-root "$IMG" >/dev/null
      done
      kill_cgroup "$CG"
      ;;
    criu)
      for rep in $(seq "$REPS"); do
        start_tree
        root=$WPID
        if ! take_once criu "$rep"; then kill_cgroup "$CG"; break; fi
        wait_gone "$root"
        kill_cgroup "$CG"
        t0=$(now_ns)
        if out=$("$BIN" restart "$ID" --snapshot --mount-root "$W/alt" --image-root "$IMG" --criu "$CRIU" 2>&1); then
          restart_ms=$(ms_since "$t0")
          log "restart: $restart_ms ms: $(echo "$out" | grep restored | cut -c1-100)"
          echo "$ROW,$restart_ms,$OBJ,ok" >> "$CSV"
        else
          echo "$out" > "$RESULTS_DIR/frozen-many-restart-error.txt"
          log "snapckpt restart FAILED: $BIN restart $ID --snapshot --mount-root $W/alt --image-root $IMG"
          echo "$out" | tail -5 >&2
          echo "$ROW,,$OBJ,restart-failed" >> "$CSV"
        fi
        # The restored tree is in the same session (and, if CRIU put it back, the cgroup).
        kill_session "$root"
        kill_cgroup "$CG"
        for m in $(mounts_under "$W/alt"); do umount "$m"; done
        "$BIN" delete "$ID" --force --image-root "$IMG" >/dev/null
      done
      ;;
  esac
done

python3 "$BENCH_DIR/summarize.py" frozen-many "$CSV" > "$RESULTS_DIR/frozen-many.md"
cat "$RESULTS_DIR/frozen-many.md"
