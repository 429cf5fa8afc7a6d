#!/usr/bin/env bash
# The frozen window when the data is still dirty: a process that has just written a dense
# orphan of N bytes (no sync: still dirty in the page cache) or the same after a `sync`,
# checkpointed by
#   snapckpt      take --pid P --engine criu --snapshot btrfs   then restart --snapshot --mount-root
#   snapckpt-base the same with $BASE_BIN (e.g. a build of the commit before write-back), if set
#   criu          criu dump -t P -D DIR --ghost-limit 64G (the orphan copied as a ghost file)
#                 then criu restore -D DIR -d
#   criu-durable  the same dump followed by `sync` of every image file and the directory
#                 (fsync: the image on disk, as snapckpt's is when take returns)
# side by side, on a loop btrfs. Reported: the whole command, snapckpt's frozen window and
# stages (checkpoint.json `timings`: writeback, freeze, relink, snapshot, dump, frozen), CRIU's
# own frozen_time (its stats-dump) for every tool, restart/restore time, and whether the
# restored process sees the same data.
#
# Env: SIZES="1M 256M 1G"  REPS=3  CACHES="dirty synced"  BASE_BIN=  VERIFY=1
# Output: $RESULTS_DIR/dirty-take.csv (one row per repetition), dirty-take.md (medians).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-"1M 256M 1G"}
REPS=${REPS:-3}
CACHES=${CACHES:-"dirty synced"}
BASE_BIN=${BASE_BIN:-}
VERIFY=${VERIFY:-1}

bench_init dirty-take
cd "$W"
UFILES=$(build_prog "$REPO/integration/progs/ufiles.c")
CSV=$RESULTS_DIR/dirty-take.csv
echo "cache,size,rep,tool,take_ms,frozen_ms,writeback_ms,writeback_bytes,writeback_rounds,freeze_ms,scan_ms,relink_ms,snapshot_ms,dump_ms,criu_frozen_ms,restart_ms,dirty_before_kb,verified" > "$CSV"

maxb=0
for s in $SIZES; do b=$(size_bytes "$s"); [ "$b" -gt "$maxb" ] && maxb=$b; done
fs_size=$(( maxb * 3 + (2 << 30) ))
MNT=$W/fs
IMG=$W/images
mkdir -p "$IMG" "$W/alt"

report_of() {
  local logf=$1 pid=$2 from
  from=$(stat -c %s "$logf")
  kill -USR1 "$pid"
  for _ in $(seq 1200); do tail -c +"$((from + 1))" "$logf" | grep -q '^checked' && break; sleep 0.05; done
  tail -c +"$((from + 1))" "$logf" | grep -E '^(FD|MAP|CWD)'
}

dirty_kb() { awk '/^(Dirty|Writeback):/ { s += $2 } END { print s }' /proc/meminfo; }

# timings of a checkpoint as CSV fields frozen,writeback_ms,writeback_bytes,writeback_rounds,freeze,scan,relink,snapshot,dump
timings_csv() {
  python3 - "$1/checkpoint.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["timings"]
print(",".join(str(t.get(k, "")) for k in ("frozen_ms", "writeback_ms", "writeback_bytes", "writeback_rounds", "freeze_ms", "scan_ms", "relink_ms", "snapshot_ms", "dump_ms")))
PY
}

new_workload() {  # shape bytes logf -> WPID, before.txt
  rm -rf "${MNT:?}/data"; mkdir -p "$MNT/data"
  sync   # what earlier steps wrote is not this step's
  start_workload "$3" "$UFILES" setup "$MNT/data" "dense:$2"
  grep -E '^(FD|MAP|CWD)' "$3" > "$W/before.txt"
  [ "$1" = synced ] && sync
  return 0
}

verify() {  # logf pid -> yes/NO/skip
  [ "$VERIFY" = 1 ] || { echo skip; return; }
  report_of "$1" "$2" > "$W/after.txt"
  if diff -q "$W/before.txt" "$W/after.txt" >/dev/null; then echo yes; else diff "$W/before.txt" "$W/after.txt" >&2 || true; echo NO; fi
}

snap_point() {  # tool bin cache size rep
  local tool=$1 bin=$2 cache=$3 size=$4 rep=$5 bytes pid out id t0 take_ms restart_ms rpid ok cs dk
  bytes=$(size_bytes "$size")
  new_workload "$cache" "$bytes" "$W/s.log"; pid=$WPID
  dk=$(dirty_kb)
  t0=$(now_ns)
  out=$("$bin" take --pid "$pid" --engine criu --snapshot btrfs --image-root "$IMG" --criu "$CRIU" 2>&1) \
    || { echo "$out" >&2; die "take failed: $bin take --pid $pid --engine criu --snapshot btrfs --image-root $IMG"; }
  take_ms=$(ms_since "$t0")
  id=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
  _CKPTS+=("$IMG $id")
  local tm; tm=$(timings_csv "$IMG/$id")
  cs=$(criu_stats "$IMG/$id/stats-dump" | sed -n 's/.*criu_frozen_ms=\([0-9.]*\).*/\1/p')
  wait_gone "$pid"
  sync
  t0=$(now_ns)
  out=$("$bin" restart "$id" --snapshot --mount-root "$W/alt" --image-root "$IMG" --criu "$CRIU" 2>&1) \
    || { echo "$out" >&2; die "restart failed: $bin restart $id --snapshot --mount-root $W/alt --image-root $IMG"; }
  restart_ms=$(ms_since "$t0")
  rpid=$(echo "$out" | sed -n 's/^restored tasks \[\([0-9]*\).*/\1/p')
  [ -n "$rpid" ] || { echo "$out" >&2; die "no restored pid in the restart output"; }
  _PIDS+=("$rpid")
  ok=$(verify "$W/s.log" "$rpid")
  stop_pid "$rpid"
  for m in $(mounts_under "$W/alt"); do umount "$m"; done
  "$bin" delete "$id" --force --image-root "$IMG" >/dev/null
  echo "$cache,$size,$rep,$tool,$take_ms,$tm,$cs,$restart_ms,$dk,$ok" >> "$CSV"
  log "$cache $size #$rep $tool: take $take_ms ms (frozen,wb_ms,wb_bytes,wb_rounds,freeze,scan,relink,snapshot,dump = $tm; CRIU frozen $cs ms), restart $restart_ms ms, dirty before $dk kB, verified $ok"
}

criu_point() {  # durable(0/1) cache size rep
  local durable=$1 cache=$2 size=$3 rep=$4 bytes pid t0 take_ms restart_ms ok cs dk tool=criu
  [ "$durable" = 1 ] && tool=criu-durable
  bytes=$(size_bytes "$size")
  rm -rf "$W/criu-img"; mkdir -p "$W/criu-img"
  new_workload "$cache" "$bytes" "$W/c.log"; pid=$WPID
  dk=$(dirty_kb)
  t0=$(now_ns)
  "$CRIU" dump -t "$pid" -D "$W/criu-img" --ghost-limit 64G -o dump.log \
    || { tail -20 "$W/criu-img/dump.log" >&2; die "criu dump failed: $CRIU dump -t $pid -D $W/criu-img --ghost-limit 64G"; }
  [ "$durable" = 1 ] && sync "$W"/criu-img/* "$W/criu-img"
  take_ms=$(ms_since "$t0")
  cs=$(criu_stats "$W/criu-img/stats-dump" | sed -n 's/.*criu_frozen_ms=\([0-9.]*\).*/\1/p')
  wait_gone "$pid"
  restart_ms= ok=skip
  if [ "$durable" = 0 ]; then
    sync
    t0=$(now_ns)
    "$CRIU" restore -D "$W/criu-img" -d -o restore.log \
      || { tail -20 "$W/criu-img/restore.log" >&2; die "criu restore failed: $CRIU restore -D $W/criu-img -d"; }
    restart_ms=$(ms_since "$t0")
    _PIDS+=("$pid")
    ok=$(verify "$W/c.log" "$pid")
    stop_pid "$pid"
  fi
  rm -rf "$W/criu-img"
  echo "$cache,$size,$rep,$tool,$take_ms,,,,,,,,,,$cs,$restart_ms,$dk,$ok" >> "$CSV"
  log "$cache $size #$rep $tool: dump $take_ms ms (CRIU frozen $cs ms), restore $restart_ms ms, dirty before $dk kB, verified $ok"
}

log "making a $((fs_size >> 30)) GiB btrfs on a loop device"
mkfs_loop btrfs "$fs_size" "$MNT"
for size in $SIZES; do
  for rep in $(seq "$REPS"); do
    for cache in $CACHES; do
      snap_point snapckpt "$BIN" "$cache" "$size" "$rep"
      [ -n "$BASE_BIN" ] && snap_point snapckpt-base "$BASE_BIN" "$cache" "$size" "$rep"
      criu_point 0 "$cache" "$size" "$rep"
      criu_point 1 "$cache" "$size" "$rep"
    done
  done
done
umount "$MNT"

python3 - "$CSV" > "$RESULTS_DIR/dirty-take.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def num(v):
    try: return float(v)
    except (TypeError, ValueError): return None
def med(rs, k):
    v = [num(r[k]) for r in rs if num(r[k]) is not None]
    if not v: return "-"
    m, lo, hi = statistics.median(v), min(v), max(v)
    f = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.1f}"
    return f"{f(m)} ({f(lo)}–{f(hi)})" if len(v) > 1 else f(m)
order = {"snapckpt": 0, "snapckpt-base": 1, "criu": 2, "criu-durable": 3}
keys = sorted({(r["size"], r["cache"], r["tool"]) for r in rows},
              key=lambda k: (num(k[0][:-1]) * {"K": 1, "M": 1 << 10, "G": 1 << 20}[k[0][-1]], k[1] != "dirty", order.get(k[2], 9)))
print("Medians (min–max) of", max(int(r["rep"]) for r in rows), "runs, ms. *frozen*: snapckpt's window (freeze to kill, checkpoint.json); *CRIU frozen*: CRIU's own `frozen_time` (stats-dump); *write-back*: before the freeze, tasks running.")
print()
print("| size | page cache | tool | whole command | frozen | CRIU frozen | write-back (MiB) | relink | snapshot | dump | restart / restore | verified |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for k in keys:
    rs = [r for r in rows if (r["size"], r["cache"], r["tool"]) == k]
    wbb = [num(r["writeback_bytes"]) for r in rs if num(r["writeback_bytes"]) is not None]
    wb = f"{med(rs, 'writeback_ms')} ({statistics.median(wbb) / 2**20:.0f})" if wbb else "-"
    ver = "/".join(sorted({r["verified"] for r in rs}))
    print(f"| {k[0]} | {k[1]} | {k[2]} | {med(rs, 'take_ms')} | {med(rs, 'frozen_ms')} | {med(rs, 'criu_frozen_ms')} | {wb} | {med(rs, 'relink_ms')} | {med(rs, 'snapshot_ms')} | {med(rs, 'dump_ms')} | {med(rs, 'restart_ms')} | {ver} |")
PY
cat "$RESULTS_DIR/dirty-take.md"
