#!/usr/bin/env bash
# The copy fallback: on ext4 (no reflink) an orphan (nlink 0) cannot be cloned, so relink
# copies its data segments into a new inode. A 1 GiB sparse orphan (64 KiB of data every
# 64 MiB) and a 1 GiB dense orphan, each held by a ufiles process on a loop ext4:
#   snapckpt take --pid P --engine none --snapshot none   -> relink_ms from checkpoint.json
#   cp --sparse=always /proc/P/fd/N <same fs>/copy        -> the same bytes copied by cp
#   the same cp followed by `sync FILE` (fsync: relink fsyncs its copy before linking it in)
# Warm page cache, no sync inside the timed steps (both leave dirty pages behind; `sync`
# runs between steps, untimed). The copy and the checkpoint are removed after each step.
#
# Env: SIZE=1G SHAPES="sparse dense" REPS=3 FS=ext4
# Output: $RESULTS_DIR/copy-fallback.csv, copy-fallback.md
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=${SIZE:-1G}
SHAPES=${SHAPES:-"sparse dense"}
REPS=${REPS:-3}
FS=${FS:-ext4}

bench_init copy-fallback
cd "$W"
UFILES=$(build_prog "$REPO/integration/progs/ufiles.c")
CSV=$RESULTS_DIR/copy-fallback.csv
echo "fs,shape,size,rep,take_ms,relink_ms,frozen_ms,bytes_copied,cp_ms,cp_sync_ms,how" > "$CSV"
bytes=$(size_bytes "$SIZE")
MNT=$W/fs
IMG=$W/images
mkdir -p "$IMG"
mkfs_loop "$FS" $((bytes * 3 + (1 << 30))) "$MNT"

for shape in $SHAPES; do
  [ "$shape" = sparse ] && scen=orphan:$bytes || scen=dense:$bytes
  rm -rf "${MNT:?}/data"; mkdir -p "$MNT/data"
  start_workload "$W/u.log" "$UFILES" setup "$MNT/data" "$scen"
  pid=$WPID
  fd=$(sed -n 's/^FD \([0-9]*\) kind=reg .*nlink=0 .*/\1/p' "$W/u.log" | head -1)
  [ -n "$fd" ] || die "no orphan fd in the workload's report"
  for rep in $(seq "$REPS"); do
    sync
    t0=$(now_ns)
    out=$("$BIN" take --pid "$pid" --engine none --snapshot none --image-root "$IMG" 2>&1) \
      || { echo "$out" >&2; die "snapckpt take failed: $BIN take --pid $pid --engine none --snapshot none --image-root $IMG"; }
    take_ms=$(ms_since "$t0")
    id=$(echo "$out" | sed -n 's/^checkpoint \([^ ]*\) in .*/\1/p')
    _CKPTS+=("$IMG $id")
    how=$(echo "$out" | sed -n 's/.*object(s): \(.*\)$/\1/p')
    copied=$(echo "$out" | sed -n 's/.* copied (\([0-9]*\) bytes).*/\1/p')
    tm=$(ckpt_timings "$IMG/$id")
    relink_ms=$(echo "$tm" | sed -n 's/.*relink_ms=\([0-9]*\).*/\1/p')
    frozen_ms=$(echo "$tm" | sed -n 's/.*frozen_ms=\([0-9]*\).*/\1/p')
    "$BIN" delete "$id" --force --image-root "$IMG" >/dev/null
    sync
    t0=$(now_ns)
    cp --sparse=always "/proc/$pid/fd/$fd" "$MNT/copy"
    cp_ms=$(ms_since "$t0")
    rm -f "$MNT/copy"
    sync
    # relink fsyncs the copy before linking it in (crash safety); cp does not: time cp + fsync
    t0=$(now_ns)
    cp --sparse=always "/proc/$pid/fd/$fd" "$MNT/copy"
    sync "$MNT/copy"
    cp_sync_ms=$(ms_since "$t0")
    rm -f "$MNT/copy"
    echo "$FS,$shape,$SIZE,$rep,$take_ms,$relink_ms,$frozen_ms,$copied,$cp_ms,$cp_sync_ms,\"$how\"" >> "$CSV"
    log "$FS $shape $SIZE #$rep: take $take_ms ms ($tm; $how), cp --sparse=always $cp_ms ms, cp + fsync $cp_sync_ms ms"
  done
  stop_pid "$pid"
done

python3 "$BENCH_DIR/summarize.py" copy-fallback "$CSV" > "$RESULTS_DIR/copy-fallback.md"
cat "$RESULTS_DIR/copy-fallback.md"
