#!/bin/bash
# Migration of LVM thin snapshots (export/import), end to end, in the QEMU guest: two volume
# groups stand in for two machines (integration/vm/migrate-guest/test.sh).
#
# Usage: integration/vm/migrate-tests.sh   (as root; env as for run.sh, plus
#                                           MIGRATE_TESTS_TIMEOUT, default 900 s;
#                                           MIGRATE_TESTS_KEEP=1 keeps the share dir)
#
# Builds snapckpt (cargo build --release) and the static workload ufiles, boots the guest once,
# prints the guest's PASS/FAIL lines and a last line `N passed, M failed`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
log() { echo "[migrate-tests] $*" >&2; }

SHARE=$(mktemp -d "${TMPDIR:-/tmp}/snapckpt-migrate-tests.XXXXXX")
if [ "${MIGRATE_TESTS_KEEP:-0}" = 1 ]; then
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
cp "$HERE"/migrate-guest/* "$SHARE/"
chmod +x "$SHARE/test.sh" "$SHARE/snapckpt" "$SHARE/ufiles"
T1=$(date +%s.%N)

rc=0
VM_QUIET=${VM_QUIET:-1} "$HERE/run.sh" "$SHARE" "${MIGRATE_TESTS_TIMEOUT:-900}" < /dev/null || rc=$?
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
awk -v a="$T0" -v b="$T1" -v c="$T2" 'BEGIN{printf "[migrate-tests] build %.1fs, guest %.1fs\n", b - a, c - b}' >&2
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$rc" = 0 ]
