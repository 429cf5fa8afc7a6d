#!/bin/bash
# The snapckpt_relink kernel module (kmod/) in the QEMU guest (the host has no module dir).
#
# Usage: integration/vm/kmod-tests.sh      (as root, non-interactive; env as for run.sh, plus
#                                           KMOD_TESTS_TIMEOUT, default 900 s;
#                                           KMOD_TESTS_DENSE_MIB, default 256: the dense
#                                           orphan of the snapckpt case on thin+ext4
#                                           (1024: +~95 s of guest time; classic: at most
#                                           256);
#                                           KMOD_TESTS_XFS_DENSE_MIB, default min(256, that):
#                                           on thin+xfs (1024: +~70 s);
#                                           KMOD_TESTS_C_DENSE_MIB, default min(256, that):
#                                           relinktest's on the thin LVs;
#                                           KMOD_TESTS_COPY_TIMING=1: also time a cp of it;
#                                           KMOD_TESTS_SNAPCKPT=0: no snapckpt build, no sc-*
#                                           cases; KMOD_TESTS_KEEP=1 keeps the share)
# Guest time (TCG, 2 CPUs): see integration/vm/README.md and the TIME lines.
#
# Builds the module for the guest kernel (kmod/build.sh: Debian's headers, cached), the static
# test program relinktest (integration/progs/relinktest.c), snapckpt (cargo build --release)
# and the static workload ufiles (integration/progs/ufiles.c), puts them and
# integration/vm/kmod-guest/*.sh into a temporary share, boots the guest once (run.sh, disks
# vdb 6G + vdc 4G) to run kmod-guest/test.sh (the module through relinktest, then snapckpt
# take/restart with it and without it), prints the guest's PASS/FAIL/TIME/NOTE lines and ends
# with a line `N passed, M failed`. Exits non-zero if anything failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=kmod-tests
# shellcheck source=share.sh
. "$HERE/share.sh"

make_share "${KMOD_TESTS_KEEP:-0}"
"$HERE/build-image.sh" "${SNAPCKPT_VM_CACHE:-/var/cache/snapckpt-vm}"   # the guest kernel version
KO=$("$REPO/kmod/build.sh")
cp "$KO" "$SHARE/snapckpt_relink.ko"
log "cc -static relinktest.c"
cc -static -O2 -Wall -I "$REPO/kmod" -o "$SHARE/relinktest" "$REPO/integration/progs/relinktest.c"
if [ "${KMOD_TESTS_SNAPCKPT:-1}" = 1 ]; then
  # snapckpt itself and its test workload, as lvm-tests.sh builds them
  share_snapckpt
fi
cp "$HERE"/kmod-guest/*.sh "$SHARE/"
chmod +x "$SHARE/test.sh" "$SHARE/relinktest"
D=${KMOD_TESTS_DENSE_MIB:-256}
M=$(( D < 256 ? D : 256 ))
printf 'DENSE_MIB=%s\nXFS_DENSE_MIB=%s\nCLASSIC_DENSE_MIB=%s\nC_DENSE_MIB=%s\nCOPY_TIMING=%s\n' "$D" \
  "${KMOD_TESTS_XFS_DENSE_MIB:-$M}" "$M" "${KMOD_TESTS_C_DENSE_MIB:-$M}" "${KMOD_TESTS_COPY_TIMING:-0}" > "$SHARE/env"
VM_DISKS=${VM_DISKS:-6G 4G} boot_and_report "${KMOD_TESTS_TIMEOUT:-900}"
