#!/bin/bash
# snapckpt's LVM backend, end to end, in the QEMU guest (the host kernel has no device-mapper).
#
# Usage: integration/vm/lvm-tests.sh      (as root, non-interactive; env as for run.sh, plus
#                                          LVM_TESTS_TIMEOUT, default 900 s; LVM_TESTS_KEEP=1
#                                          keeps the share dir with console.log for debugging)
#
# Builds snapckpt (cargo build --release) and the static test workload ufiles, puts them and
# integration/vm/lvm-guest/* into a temporary share, boots the guest once (run.sh) to run
# lvm-guest/test.sh (thin+ext4, thin+xfs, classic+ext4, classic+xfs: take, list, restart,
# restart again, delete; then the CRIU engine with the guest's criu 3.17 on thin+ext4 and
# thin+xfs: take, two restarts, each restored task checks its fds), prints the guest's PASS/FAIL lines and timings, and ends with a line
# `N passed, M failed`. Exits non-zero if anything failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
log() { echo "[lvm-tests] $*" >&2; }

SHARE=$(mktemp -d "${TMPDIR:-/tmp}/snapckpt-lvm-tests.XXXXXX")
if [ "${LVM_TESTS_KEEP:-0}" = 1 ]; then
  trap 'log "kept $SHARE (console.log, summary)"' EXIT
else
  trap 'rm -rf "$SHARE"' EXIT
fi

T0=$(date +%s.%N)
log "cargo build --release"
(cd "$REPO" && cargo build --release --quiet --bin snapckpt) >&2
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case "$TARGET" in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
cp "$TARGET/release/snapckpt" "$SHARE/snapckpt"
log "cc -static ufiles.c"
cc -static -O1 -o "$SHARE/ufiles" "$REPO/integration/progs/ufiles.c"
cp "$HERE"/lvm-guest/* "$SHARE/"
chmod +x "$SHARE/test.sh" "$SHARE/snapckpt" "$SHARE/ufiles"
T1=$(date +%s.%N)

rc=0
VM_QUIET=${VM_QUIET:-1} "$HERE/run.sh" "$SHARE" "${LVM_TESTS_TIMEOUT:-900}" < /dev/null || rc=$?
T2=$(date +%s.%N)

passed=0
failed=0
if [ -f "$SHARE/summary" ]; then
  echo "=== guest summary"
  grep -E '^(PASS|FAIL|TIME) ' "$SHARE/summary" || true
  passed=$(grep -c '^PASS ' "$SHARE/summary" || true)
  failed=$(grep -c '^FAIL ' "$SHARE/summary" || true)
fi
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
  echo "FAIL guest: run.sh exited $rc (the guest test did not finish)"
  failed=$((failed + 1))
fi
awk -v a="$T0" -v b="$T1" -v c="$T2" 'BEGIN{printf "[lvm-tests] build %.1fs, guest %.1fs\n", b - a, c - b}' >&2
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$rc" = 0 ]
