#!/bin/bash
# snapckpt's LVM backend, end to end, in the QEMU guest (the host kernel has no device-mapper).
#
# Usage: integration/vm/lvm-tests.sh      (as root, non-interactive; env as for run.sh, plus
#                                          LVM_TESTS_TIMEOUT, default 900 s; LVM_TESTS_KEEP=1
#                                          keeps the share dir with console.log for debugging;
#                                          LVM_TESTS_ONLY=predump runs only the pre-dump case;
#                                          PREDUMP_MIB=N sizes its task, default 256)
#
# Builds snapckpt (cargo build --release) and the static test workload ufiles, puts them and
# integration/vm/lvm-guest/* into a temporary share, boots the guest once (run.sh) to run
# lvm-guest/test.sh (thin+ext4, thin+xfs, classic+ext4, classic+xfs: take, list, restart,
# restart again, delete; then the CRIU engine with the guest's criu 3.17 on thin+ext4 and
# thin+xfs: take, two restarts, each restored task checks its fds; then CRIU pre-dump on
# thin+ext4 with a 256 MiB task, memhold: take with and without --pre-dump, restart, the
# restored task checks its memory and unlinked file), prints the guest's PASS/FAIL lines,
# NOTE lines (frozen times, pages written) and timings, and ends with a line
# `N passed, M failed`. Exits non-zero if anything failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=lvm-tests
# shellcheck source=share.sh
. "$HERE/share.sh"

make_share "${LVM_TESTS_KEEP:-0}"
share_snapckpt
cc -static -O1 -o "$SHARE/memhold" "$REPO/integration/progs/memhold.c"
# LVM_TESTS_ONLY=predump: only the pre-dump case (the guest reads it from the share)
[ -n "${LVM_TESTS_ONLY:-}" ] && echo "$LVM_TESTS_ONLY" > "$SHARE/only"
# PREDUMP_MIB=N: the pre-dump case's task holds N MiB (default 256; give the guest room with
# VM_MEM, e.g. PREDUMP_MIB=1024 VM_MEM=4096)
[ -n "${PREDUMP_MIB:-}" ] && echo "$PREDUMP_MIB" > "$SHARE/predump_mib"
cp "$HERE"/lvm-guest/* "$SHARE/"
chmod +x "$SHARE/test.sh"
boot_and_report "${LVM_TESTS_TIMEOUT:-900}"
