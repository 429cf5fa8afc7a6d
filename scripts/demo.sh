#!/usr/bin/env bash
# The main job on a built-in default, end to end, as root:
#   a loop-mounted btrfs image, a demo workload holding unlinked files of every kind
#   (a name-gone file, a 256 MiB sparse orphan, a mapped orphan, an O_TMPFILE file, two fds
#   on one orphan, a removed cwd), then: take (CRIU dump + btrfs snapshot), kill, change the
#   live filesystem, restart from the snapshot twice, and verify each time that the restored
#   process sees exactly what it saw.
# Leaves nothing behind (set KEEP=1 to keep the filesystem and images for a look).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root" >&2; exit 1; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet
BIN=$PWD/target/release/snapckpt
D=/var/tmp/snapckpt-demo
MNT=$D/mnt
IMAGES=$D/images
W=$D/work
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  [ -n "${PID:-}" ] && kill -9 "$PID" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] && return
  for m in $(grep -o " $D/[^ ]*" /proc/self/mountinfo | sort -r); do umount -l "$m"; done
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT

say "setting up a 2 GiB btrfs image on a loop device at $MNT"
for m in $(grep -o " $D/[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r); do umount -l "$m"; done
rm -rf "$D"; mkdir -p "$MNT" "$IMAGES" "$W"
truncate -s 2G "$D/btrfs.img"
mkfs.btrfs -q -f "$D/btrfs.img"
LOOP=$(losetup --find --show "$D/btrfs.img")
mount "$LOOP" "$MNT"
mkdir -p "$MNT/data"
cc -O1 -o "$W/ufiles" integration/progs/ufiles.c

say "starting the demo workload"
setsid "$W/ufiles" setup "$MNT/data" ab orphan:268435456 mmap tmpfile twofds cwd </dev/null >"$W/workload.log" 2>&1 &
for _ in $(seq 100); do grep -q ready "$W/workload.log" && break; sleep 0.1; done
PID=$(sed -n 's/^ready pid=//p' "$W/workload.log")
sed '/^ready/d' "$W/workload.log" | grep -E '^(FD|MAP|CWD)' > "$W/before.txt"
echo "workload pid $PID holds:"; cat "$W/before.txt"
"$BIN" scan --pid "$PID"

say "snapckpt take (freeze, relink, CRIU dump with the files external, btrfs snapshot)"
sed -e "s|^pid = .*|pid = $PID|" -e "s|^image_root = .*|image_root = \"$IMAGES\"|" config/demo.toml > "$W/job.toml"
"$BIN" take --job "$W/job.toml"
ID=$(ls "$IMAGES" | head -1)
echo "image directory: $(du -sh "$IMAGES/$ID" | cut -f1) for $(grep -c '"index"' "$IMAGES/$ID/checkpoint.json") unlinked objects"
"$BIN" list --image-root "$IMAGES"
for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && { echo "demo: the workload survived the dump" >&2; exit 1; }
echo "workload $PID is gone (CRIU killed it after the dump)"

say "changing the live filesystem (the checkpoint must not see this)"
echo "changed after the checkpoint" > "$MNT/data/b"
rm -f "$MNT/data/a"

# The workload's log is an ordinary (linked) file: CRIU checks that it still has the size it
# had at the dump, so each restart starts from that size again.
LOGSIZE=$(stat -c %s "$W/workload.log")
stop_workload() {
  kill -9 "$PID"
  for _ in $(seq 100); do [ -e "/proc/$PID" ] || return 0; sleep 0.05; done
  echo "demo: pid $PID still exists: $(cat /proc/$PID/status | grep State)" >&2; exit 1
}
verify() {
  local n=$1
  # a restored task handles signals once it is back in pause()
  for _ in $(seq 300); do grep -q pause "/proc/$PID/wchan" 2>/dev/null && break; sleep 0.1; done
  kill -USR1 "$PID"
  for _ in $(seq 100); do tail -c +"$((LOGSIZE + 1))" "$W/workload.log" | grep -q '^checked' && break; sleep 0.1; done
  tail -c +"$((LOGSIZE + 1))" "$W/workload.log" | grep -E '^(FD|MAP|CWD)' > "$W/after$n.txt"
  if diff -u "$W/before.txt" "$W/after$n.txt"; then
    echo "restart $n: the restored process sees exactly what it saw at the checkpoint:"
    sed 's/^/    /' "$W/after$n.txt"
  else
    echo "restart $n: MISMATCH" >&2; exit 1
  fi
}

say "restart 1: writable clone of the snapshot mounted at $MNT in the restored task's own mount namespace, CRIU restore"
"$BIN" restart "$ID" --snapshot --image-root "$IMAGES"
verify 1
echo "b as the restored task sees it: $(head -c 5 "/proc/$PID/root$MNT/data/b")  (the checkpoint's content)"
echo "b on the host:                  $(head -c 5 "$MNT/data/b")  (the live change; the host never saw the clone)"
stop_workload

truncate -s "$LOGSIZE" "$W/workload.log"
say "restart 2 from the same checkpoint, under $D/alt in the host's namespace"
mkdir -p "$D/alt"
"$BIN" restart "$ID" --snapshot --mount-root "$D/alt" --image-root "$IMAGES"
verify 2
stop_workload

say "delete the checkpoint and its snapshot"
"$BIN" delete "$ID" --force --image-root "$IMAGES"
"$BIN" list --image-root "$IMAGES"
say "demo passed"
