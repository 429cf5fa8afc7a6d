#!/bin/bash
# Boot the cached snapckpt test guest once, run SHARE_DIR/test.sh inside it, power off.
#
# Usage: integration/vm/run.sh SHARE_DIR [TIMEOUT_SECONDS]      (default timeout 900)
#
# - SHARE_DIR is shared into the guest (9p) at /share; the guest runs /share/test.sh as root
#   with cwd /share (directly if executable, else with bash), stdin /dev/null, env VMTEST=1,
#   and writes its exit status to /share/exit-code. run.sh exits with that status; a missing
#   exit-code (crash, timeout, ...) is a failure (124 on timeout, 125 otherwise).
# - Guest disks: vda = qcow2 overlay of the cached pristine root.img (so runs are
#   independent); vdb = blank 4G, vdc = blank 2G (sparse, deleted afterwards).
# - The guest console is written to SHARE_DIR/console.log and streamed to stdout;
#   with VM_QUIET=1 only its tail is printed, and only on failure.
# - Calls build-image.sh first (a no-op when the cache is up to date).
# Env: SNAPCKPT_VM_CACHE (default /var/cache/snapckpt-vm), VM_QUIET=0|1,
#      VM_DISKS="4G 2G" (sizes of vdb, vdc, ...), VM_MEM=2048, VM_SMP=2, VM_TMPDIR (default
#      $TMPDIR or /tmp), VM_APPEND (extra kernel command line).
# In the guest before test.sh: /proc /sys /dev /dev/pts /dev/shm /run /tmp mounted, cgroup v1
# freezer at /sys/fs/cgroup/freezer + cgroup2 at /sys/fs/cgroup/unified (as on the host),
# modules dm_thin_pool dm_snapshot btrfs xfs ext4 loop loaded, lo up, udevd running.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 SHARE_DIR [TIMEOUT_SECONDS]" >&2; exit 2; }
[ -d "$1" ] || { echo "run.sh: share dir '$1' does not exist" >&2; exit 2; }
SHARE=$(cd "$1" && pwd)
TIMEOUT=${2:-900}
CACHE=${SNAPCKPT_VM_CACHE:-/var/cache/snapckpt-vm}
QUIET=${VM_QUIET:-0}
DISKS=${VM_DISKS:-4G 2G}
MEM=${VM_MEM:-2048}
SMP=${VM_SMP:-2}
log() { echo "[vm-run] $*" >&2; }
[ -f "$SHARE/test.sh" ] || { log "no $SHARE/test.sh"; exit 2; }

"$HERE/build-image.sh" "$CACHE"

T=""
QPID=""
cleanup() {
  local rc=$?
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null || true   # timeout(1) passes it on to qemu
    sleep 1; kill -KILL "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  [ -n "$T" ] && rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T=$(mktemp -d "${VM_TMPDIR:-${TMPDIR:-/tmp}}/snapckpt-vm-run.XXXXXX")
qemu-img create -q -f qcow2 -F raw -b "$CACHE/root.img" "$T/root.qcow2"
DRIVES=(-drive "file=$T/root.qcow2,format=qcow2,if=virtio,cache=unsafe")
i=0
for size in $DISKS; do
  truncate -s "$size" "$T/disk$i.img"
  DRIVES+=(-drive "file=$T/disk$i.img,format=raw,if=virtio,cache=unsafe")
  i=$((i + 1))
done

rm -f "$SHARE/exit-code" "$SHARE/exit-code.tmp" "$SHARE/console.log"
# fd 3 = where the live console goes (not ">/dev/stdout": that reopens, and truncates, a file)
if [ "$QUIET" = 1 ]; then exec 3>/dev/null; else exec 3>&1; fi

Q=${SHARE//,/,,}   # qemu option syntax: a comma in a value is written twice
log "booting guest (TCG, ${SMP} CPUs, ${MEM} MiB, timeout ${TIMEOUT}s), share $SHARE"
START=$(date +%s.%N)
# -chardev stdio with logfile=: the console goes both to our stdout and to console.log.
# Started in the background + wait, so that a signal to this script is handled at once.
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg -cpu max -m "$MEM" -smp "$SMP" \
  -nodefaults -no-user-config -display none -no-reboot \
  -chardev "stdio,id=con0,signal=off,logfile=$Q/console.log" -serial chardev:con0 \
  -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw init=/sbin/vmtest-init panic=-1 quiet ${VM_APPEND:-}" \
  "${DRIVES[@]}" \
  -virtfs "local,path=$Q,mount_tag=share,security_model=none,id=share" \
  -device virtio-rng-pci \
  </dev/null >&3 2>"$T/qemu.err" &
QPID=$!
QRC=0
wait "$QPID" || QRC=$?
QPID=""
[ "$QUIET" = 1 ] || echo
# the serial console ends lines with CR LF: keep console.log grep-friendly
[ -f "$SHARE/console.log" ] && sed -i 's/\r//g' "$SHARE/console.log"
SECS=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e - s}')

RC=""
if [ -f "$SHARE/exit-code" ]; then RC=$(tr -dc '0-9' < "$SHARE/exit-code"); fi
if [ -z "$RC" ]; then
  if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    log "TIMEOUT after ${TIMEOUT}s: no exit-code from the guest"; RC=124
  else
    log "guest wrote no exit-code (qemu exit status $QRC)"; RC=125
  fi
fi
[ -s "$T/qemu.err" ] && { log "qemu stderr:"; sed 's/^/    /' "$T/qemu.err" >&2; }
if [ "$RC" != 0 ] && [ "$QUIET" = 1 ] && [ -f "$SHARE/console.log" ]; then
  log "last 80 lines of $SHARE/console.log:"
  tail -n 80 "$SHARE/console.log" >&2
fi
log "guest finished in ${SECS}s, exit status $RC"
exit "$RC"
