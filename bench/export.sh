#!/usr/bin/env bash
# snapckpt export (record + CRIU image + btrfs send, zstd) against what plain CRIU would ship:
# `criu dump` of the same task with its unlinked file copied into the image as a ghost file,
# and `tar` (plain, and piped through zstd -3) of that image directory.
#
#   bench/export.sh
#
# Workload: a session leader (`sleep`) holding one unlinked file of N bytes of random data
# (incompressible: the sizes show what travels, not what compresses).
#  * vs data size: for each N in SIZES, a full export of a CRIU checkpoint (--leave-running),
#    then criu dump --leave-running of the same task with --ghost-limit, then tar of its images.
#  * vs changed size: on a task holding BASE bytes, for each C in CHANGES, C bytes of new random
#    data are written to the filesystem, a new checkpoint is taken, and exported both
#    incrementally (--parent the previous checkpoint) and in full.
# Env: SIZES="16M 64M 256M 1G"  BASE=256M  CHANGES="1M 16M 64M"  CACHES="dirty synced"
#  * dirty: each step starts right after the previous one wrote its data (as a user's would);
#    synced: a `sync` before each timed step, which hides the write-back the step would pay.
# Output: $RESULTS_DIR/export.csv (one row per point), export.md (the tables).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-"16M 64M 256M 1G"}
BASE=${BASE:-256M}
CHANGES=${CHANGES:-"1M 16M 64M"}
CACHES=${CACHES:-"dirty synced"}
CACHE=synced
# Before a timed step: a sync in the synced case only.
settle() { if [ "$CACHE" = synced ]; then sync; fi; }

bench_init export
cd "$W"
CSV=$RESULTS_DIR/export.csv
echo "series,cache,data,changed,tool,bytes,ms" > "$CSV"
row() { echo "$1,$CACHE,$2,$3,$4,$5,$6" >> "$CSV"; log "$1 $CACHE data=$2 changed=$3 $4: $5 bytes, $6 ms"; }

# hold_orphan DIR BYTES: a session leader holding DIR/orphan (random data) unlinked; sets WPID.
hold_orphan() {
  head -c "$2" /dev/urandom > "$1/orphan"
  start_workload "$W/w.log" bash -c "exec 3<'$1/orphan'; rm '$1/orphan'; echo ready pid=\$\$; exec sleep 1000000"
}

# take_ckpt PID: a CRIU checkpoint (the task goes on); sets ID.
take_ckpt() {
  local out
  settle
  out=$("$BIN" take --pid "$1" --engine criu --leave-running --snapshot btrfs --image-root "$W/img" --criu "$CRIU" 2>&1) \
    || { echo "$out" >&2; die "take failed"; }
  ID=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
  _CKPTS+=("$W/img $ID")
}

# export_ckpt ID [ARGS...]: export to $W/s.snap; prints "bytes ms".
export_ckpt() {
  local id=$1 t0 ms; shift
  rm -f "$W/s.snap"; settle
  t0=$(now_ns)
  "$BIN" export "$id" -o "$W/s.snap" --image-root "$W/img" "$@" 2>/dev/null || die "export $id $* failed"
  ms=$(ms_since "$t0")
  echo "$(stat -c %s "$W/s.snap") $ms"
}

# ---- vs data size
for CACHE in $CACHES; do
for size in $SIZES; do
  bytes=$(size_bytes "$size")
  mnt=$W/fs-$CACHE-$size
  mkfs_loop btrfs $(( bytes * 4 + (1 << 30) )) "$mnt"
  mkdir -p "$mnt/data"
  hold_orphan "$mnt/data" "$bytes"; pid=$WPID
  take_ckpt "$pid"
  # shellcheck disable=SC2046
  set -- $(export_ckpt "$ID"); row data "$size" 0 snapckpt-export "$1" "$2"
  rm -rf "$W/criu-img"; mkdir -p "$W/criu-img"; settle
  t0=$(now_ns)
  "$CRIU" dump -t "$pid" -D "$W/criu-img" --ghost-limit 64G --leave-running -o dump.log \
    || { tail -20 "$W/criu-img/dump.log" >&2; die "criu dump failed"; }
  row data "$size" 0 criu-dump-ghost "$(du -sb --exclude=dump.log "$W/criu-img" | cut -f1)" "$(ms_since "$t0")"
  settle; t0=$(now_ns)
  tar -C "$W/criu-img" -cf "$W/criu.tar" .
  row data "$size" 0 tar-criu-image "$(stat -c %s "$W/criu.tar")" "$(ms_since "$t0")"
  settle; t0=$(now_ns)
  tar -C "$W/criu-img" -cf - . | zstd -q -3 -T1 > "$W/criu.tar.zst"
  row data "$size" 0 tar-zstd-criu-image "$(stat -c %s "$W/criu.tar.zst")" "$(ms_since "$t0")"
  rm -rf "$W/criu-img" "$W/criu.tar" "$W/criu.tar.zst" "$W/s.snap"
  stop_pid "$pid"
  "$BIN" delete "$ID" --force --image-root "$W/img" >/dev/null
  umount "$mnt"
done
done

# ---- vs changed size
bytes=$(size_bytes "$BASE")
mnt=$W/fs-inc
total=$bytes
for c in $CHANGES; do total=$(( total + $(size_bytes "$c") )); done
mkfs_loop btrfs $(( total * 4 * $(echo $CACHES | wc -w) + (1 << 30) )) "$mnt"
for CACHE in $CACHES; do
mkdir -p "$mnt/data"
hold_orphan "$mnt/data" "$bytes"; pid=$WPID
take_ckpt "$pid"; prev=$ID
for c in $CHANGES; do
  head -c "$(size_bytes "$c")" /dev/urandom > "$mnt/data/change-$CACHE-$c"
  take_ckpt "$pid"
  # shellcheck disable=SC2046
  set -- $(export_ckpt "$ID" --parent "$prev"); row changed "$BASE" "$c" snapckpt-export-incremental "$1" "$2"
  # shellcheck disable=SC2046
  set -- $(export_ckpt "$ID"); row changed "$BASE" "$c" snapckpt-export-full "$1" "$2"
  prev=$ID
done
stop_pid "$pid"
done

python3 - "$CSV" > "$RESULTS_DIR/export.md" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def mib(b): return f"{int(b) / 2**20:.1f} MiB"
print("Export vs data size (one unlinked file of random data; CRIU checkpoint, btrfs snapshot):\n")
print("| cache | data | snapckpt export | time | criu dump (ghost) | time | tar of CRIU image | time | tar \\| zstd -3 | time |")
print("|---|---|---|---|---|---|---|---|---|---|")
for k, d in dict.fromkeys((r["cache"], r["data"]) for r in rows if r["series"] == "data"):
    by = {r["tool"]: r for r in rows if r["series"] == "data" and r["data"] == d and r["cache"] == k}
    cells = []
    for t in ("snapckpt-export", "criu-dump-ghost", "tar-criu-image", "tar-zstd-criu-image"):
        cells += [mib(by[t]["bytes"]), f'{float(by[t]["ms"]):.0f} ms']
    print(f"| {k} | {d} | " + " | ".join(cells) + " |")
print("\nExport vs changed size (the task holds BASE; C bytes of new data written before each checkpoint):\n")
print("| cache | base | changed | incremental (--parent) | time | full | time |")
print("|---|---|---|---|---|---|---|")
for k, c in dict.fromkeys((r["cache"], r["changed"]) for r in rows if r["series"] == "changed"):
    by = {r["tool"]: r for r in rows if r["series"] == "changed" and r["changed"] == c and r["cache"] == k}
    i, f = by["snapckpt-export-incremental"], by["snapckpt-export-full"]
    print(f'| {k} | {i["data"]} | {c} | {mib(i["bytes"])} | {float(i["ms"]):.0f} ms | {mib(f["bytes"])} | {float(f["ms"]):.0f} ms |')
EOF
cat "$RESULTS_DIR/export.md"
