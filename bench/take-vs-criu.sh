#!/usr/bin/env bash
# snapckpt take/restart (CRIU engine + btrfs snapshot) against plain CRIU dump/restore (ghost
# files), on one workload shape: a process holding one unlinked orphan (nlink 0) of N bytes,
# sparse (64 KiB of data every 64 MiB) or dense (all data). Same filesystem, same run.
#
#   bench/take-vs-criu.sh [--xfs]
#
# Env: SIZES="1M 16M 256M 1G 4G"  SHAPES="sparse dense"  REPS=3  FSTYPES=btrfs (--xfs adds xfs)
#      CACHES="dirty synced" (dirty: the take starts right after the workload wrote its data,
#      as a user's take would; synced: a `sync` between the two, which hides the write-back)
#      VERIFY=1 (check after each restore that the restored process sees the same file: hash)
#      LEAVE_RUNNING=1 (also time `take --leave-running`: the take without CRIU's kill at the end)
# On xfs there is no snapshot backend: take uses --snapshot none (the orphan is reflinked into
# lost+found/checkpoint on the live fs) and restart works on the live fs.
# Warm page cache, caches never dropped. One `sync` before each workload starts (earlier steps'
# writes are not flushed inside a timed step); in the synced case one more before each timed
# step (take, restart, kill), in the dirty case none.
# Plain CRIU is timed as it is and durable (`criu dump` + `sync -f` of its image directory,
# which snapckpt's published image is: it writes back its image before it reports).
# Output: $RESULTS_DIR/take-vs-criu.csv (one row per repetition), take-vs-criu.md (medians).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-"1M 16M 256M 1G 4G"}
SHAPES=${SHAPES:-"sparse dense"}
REPS=${REPS:-3}
FSTYPES=${FSTYPES:-btrfs}
VERIFY=${VERIFY:-1}
LEAVE_RUNNING=${LEAVE_RUNNING:-1}
CACHES=${CACHES:-"dirty synced"}
for a in "$@"; do
  case $a in
    --xfs) FSTYPES="$FSTYPES xfs" ;;
    *) echo "usage: $0 [--xfs]" >&2; exit 2 ;;
  esac
done

bench_init take-vs-criu
cd "$W"
UFILES=$(build_prog "$REPO/integration/progs/ufiles.c")
CSV=$RESULTS_DIR/take-vs-criu.csv
echo "fs,cache,shape,size,rep,tool,take_ms,image_bytes,restart_ms,freeze_ms,scan_ms,relink_ms,snapshot_ms,dump_ms,frozen_ms,criu_freezing_ms,criu_frozen_ms,criu_memdump_ms,criu_memwrite_ms,verified,kill_ms,durable_ms" > "$CSV"

maxb=0
for s in $SIZES; do b=$(size_bytes "$s"); [ "$b" -gt "$maxb" ] && maxb=$b; done
# Room for the orphan, CRIU's restored ghost copy, and slack for btrfs metadata.
fs_size=$(( maxb * 3 + (2 << 30) ))

# The report lines (FD/MAP/CWD) a ufiles process printed last, after a SIGUSR1 if asked.
report_of() {
  local logf=$1 pid=$2 from
  from=$(stat -c %s "$logf")
  kill -USR1 "$pid"
  for _ in $(seq 1200); do tail -c +"$((from + 1))" "$logf" | grep -q '^checked' && break; sleep 0.05; done
  tail -c +"$((from + 1))" "$logf" | grep -E '^(FD|MAP|CWD)'
}

# Before a workload starts: flush what earlier steps wrote. Before a timed step: only synced.
before_workload() { sync; }
before_take() { if [ "$1" = synced ]; then sync; fi; }

run_point() {
  local fs=$1 cache=$2 shape=$3 size=$4 rep=$5 bytes scen mnt img out id t0 take_ms restart_ms pid rpid ibytes tm ok
  bytes=$(size_bytes "$size")
  [ "$shape" = sparse ] && scen=orphan:$bytes || scen=dense:$bytes
  mnt=$W/fs-$fs
  img=$W/images
  mkdir -p "$img" "$W/alt"   # restart --mount-root must exist

  # ---- snapckpt: take (CRIU engine, files external, btrfs snapshot), restart from the snapshot
  rm -rf "${mnt:?}/data"; mkdir -p "$mnt/data"; before_workload
  start_workload "$W/s.log" "$UFILES" setup "$mnt/data" "$scen"; pid=$WPID
  grep -E '^(FD|MAP|CWD)' "$W/s.log" > "$W/before.txt"
  local snapopt=(--snapshot btrfs) restartopt=(--snapshot --mount-root "$W/alt")
  if [ "$fs" != btrfs ]; then snapopt=(--snapshot none); restartopt=(); fi
  before_take "$cache"
  t0=$(now_ns)
  out=$("$BIN" take --pid "$pid" --engine criu "${snapopt[@]}" --image-root "$img" --criu "$CRIU" 2>&1) \
    || { echo "$out" >&2; die "snapckpt take failed: $BIN take --pid $pid --engine criu ${snapopt[*]} --image-root $img"; }
  take_ms=$(ms_since "$t0")
  id=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
  # the tasks are killed after the image is published; take reports how long they took to exit
  local exit_ms; exit_ms=$(echo "$out" | sed -n 's/.*tasks killed after the checkpoint was published (exited in \([0-9]*\) ms).*/\1/p')
  _CKPTS+=("$img $id")
  ibytes=$(du -sb "$img/$id" | cut -f1)
  tm=$(ckpt_timings "$img/$id")
  wait_gone "$pid"
  before_take "$cache"   # the restart, as a user's right after the take (dirty) or synced
  t0=$(now_ns)
  out=$("$BIN" restart "$id" "${restartopt[@]}" --image-root "$img" --criu "$CRIU" 2>&1) \
    || { echo "$out" >&2; die "snapckpt restart failed: $BIN restart $id ${restartopt[*]} --image-root $img"; }
  restart_ms=$(ms_since "$t0")
  rpid=$(echo "$out" | sed -n 's/^restored tasks \[\([0-9]*\).*/\1/p')
  [ -n "$rpid" ] || { echo "$out" >&2; die "no restored pid in the restart output"; }
  _PIDS+=("$rpid")
  ok=skip
  if [ "$VERIFY" = 1 ]; then
    report_of "$W/s.log" "$rpid" > "$W/after.txt"
    if diff -q "$W/before.txt" "$W/after.txt" >/dev/null; then ok=yes; else ok=NO; diff "$W/before.txt" "$W/after.txt" >&2 || true; fi
  fi
  stop_pid "$rpid"
  for m in $(mounts_under "$W/alt"); do umount "$m"; done
  local cs; cs=$(criu_stats "$img/$id/stats-dump")
  "$BIN" delete "$id" --force --image-root "$img" >/dev/null
  echo "$fs,$cache,$shape,$size,$rep,snapckpt,$take_ms,$ibytes,$restart_ms,$(echo "$tm" | sed 's/[a-z_]*=//g; s/ /,/g'),$(echo "$cs" | sed 's/[a-z_]*=//g; s/ /,/g'),$ok,$exit_ms," >> "$CSV"
  log "$fs $cache $shape $size #$rep snapckpt: take $take_ms ms ($tm; tasks' exit after publishing $exit_ms ms), image $ibytes B, restart $restart_ms ms, verified $ok"

  # ---- snapckpt take --leave-running: the same take, the task goes on (a killed task's last
  # close of a dense orphan frees its page cache and extents, which the default take waits for
  # after publishing). Then kill -9 of the task until it is gone, timed apart.
  if [ "$LEAVE_RUNNING" = 1 ]; then
    rm -rf "${mnt:?}/data"; mkdir -p "$mnt/data"; before_workload
    start_workload "$W/l.log" "$UFILES" setup "$mnt/data" "$scen"; pid=$WPID
    before_take "$cache"
    t0=$(now_ns)
    out=$("$BIN" take --pid "$pid" --engine criu --leave-running "${snapopt[@]}" --image-root "$img" --criu "$CRIU" 2>&1) \
      || { echo "$out" >&2; die "snapckpt take failed: $BIN take --pid $pid --engine criu --leave-running ${snapopt[*]} --image-root $img"; }
    take_ms=$(ms_since "$t0")
    id=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
    _CKPTS+=("$img $id")
    ibytes=$(du -sb "$img/$id" | cut -f1)
    tm=$(ckpt_timings "$img/$id")
    cs=$(criu_stats "$img/$id/stats-dump")
    # What the default take pays at its end: kill -9 of the task until /proc/PID vanishes
    # (the last close of the orphan: page cache and, on btrfs, extents freed synchronously).
    before_take "$cache"
    t0=$(now_ns)
    stop_pid "$pid"
    local kill_ms; kill_ms=$(ms_since "$t0")
    "$BIN" delete "$id" --force --image-root "$img" >/dev/null
    echo "$fs,$cache,$shape,$size,$rep,snapckpt-leave-running,$take_ms,$ibytes,,$(echo "$tm" | sed 's/[a-z_]*=//g; s/ /,/g'),$(echo "$cs" | sed 's/[a-z_]*=//g; s/ /,/g'),skip,$kill_ms," >> "$CSV"
    log "$fs $cache $shape $size #$rep snapckpt --leave-running: take $take_ms ms ($tm); then kill -> gone $kill_ms ms"
  fi

  # ---- plain CRIU: dump with ghost files, restore
  rm -rf "${mnt:?}/data" "$W/criu-img"; mkdir -p "$mnt/data" "$W/criu-img"; before_workload
  start_workload "$W/c.log" "$UFILES" setup "$mnt/data" "$scen"; pid=$WPID
  grep -E '^(FD|MAP|CWD)' "$W/c.log" > "$W/before.txt"
  before_take "$cache"
  t0=$(now_ns)
  "$CRIU" dump -t "$pid" -D "$W/criu-img" --ghost-limit 64G -o dump.log \
    || { tail -20 "$W/criu-img/dump.log" >&2; die "criu dump failed: $CRIU dump -t $pid -D $W/criu-img --ghost-limit 64G"; }
  take_ms=$(ms_since "$t0")
  sync -f "$W/criu-img"   # durable CRIU: its image written back, as snapckpt's is
  local durable_ms; durable_ms=$(ms_since "$t0")
  ibytes=$(du -sb --exclude=dump.log "$W/criu-img" | cut -f1)
  cs=$(criu_stats "$W/criu-img/stats-dump")
  wait_gone "$pid"
  before_take "$cache"   # CRIU's restore the same way: in the dirty case its image may be unflushed
  t0=$(now_ns)
  "$CRIU" restore -D "$W/criu-img" -d -o restore.log \
    || { tail -20 "$W/criu-img/restore.log" >&2; die "criu restore failed: $CRIU restore -D $W/criu-img -d"; }
  restart_ms=$(ms_since "$t0")
  _PIDS+=("$pid")
  ok=skip
  if [ "$VERIFY" = 1 ]; then
    report_of "$W/c.log" "$pid" > "$W/after.txt"
    if diff -q "$W/before.txt" "$W/after.txt" >/dev/null; then ok=yes; else ok=NO; diff "$W/before.txt" "$W/after.txt" >&2 || true; fi
  fi
  stop_pid "$pid"
  rm -rf "$W/criu-img"
  echo "$fs,$cache,$shape,$size,$rep,criu,$take_ms,$ibytes,$restart_ms,,,,,,,$(echo "$cs" | sed 's/[a-z_]*=//g; s/ /,/g'),$ok,,$durable_ms" >> "$CSV"
  log "$fs $cache $shape $size #$rep criu: dump $take_ms ms (durable $durable_ms ms) ($cs), image $ibytes B, restore $restart_ms ms, verified $ok"
}

for fs in $FSTYPES; do
  log "making a $((fs_size >> 30)) GiB $fs on a loop device"
  mkfs_loop "$fs" "$fs_size" "$W/fs-$fs"
  for cache in $CACHES; do
    for shape in $SHAPES; do
      for size in $SIZES; do
        for rep in $(seq "$REPS"); do
          run_point "$fs" "$cache" "$shape" "$size" "$rep"
        done
      done
    done
  done
  umount "$W/fs-$fs"
done

python3 "$BENCH_DIR/summarize.py" take-vs-criu "$CSV" > "$RESULTS_DIR/take-vs-criu.md"
cat "$RESULTS_DIR/take-vs-criu.md"
