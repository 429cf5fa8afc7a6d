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
NAME=migrate-tests
# shellcheck source=share.sh
. "$HERE/share.sh"

make_share "${MIGRATE_TESTS_KEEP:-0}"
share_snapckpt
cp "$HERE"/migrate-guest/* "$SHARE/"
chmod +x "$SHARE/test.sh"
boot_and_report "${MIGRATE_TESTS_TIMEOUT:-900}"
