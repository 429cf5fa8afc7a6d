#!/usr/bin/env bash
# The whole test suite, as root: unit tests, integration tests on loop-mounted btrfs, xfs,
# ext4 and tmpfs with real processes and real CRIU, and the LVM tests in a QEMU guest.
#   SNAPCKPT_SKIP_VM=1  skip the guest (LVM) tests
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (loop devices, mounts, cgroups, CRIU)" >&2; exit 1; }
bash scripts/setup.sh
export SNAPCKPT_CRIU=${SNAPCKPT_CRIU:-/opt/snapckpt/criu/bin/criu}
# code gates: formatting and lints
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings
cargo build --quiet
cargo test --no-fail-fast -- --test-threads=2
# raw CRIU on this kernel: TCP listener, established connection, UDP (CRIU >= 4.2)
bash scripts/criu-socket-smoke.sh
# the README's demo, end to end (CRIU + btrfs snapshot, restart twice)
bash scripts/demo.sh > target/demo.log 2>&1 && echo "demo: passed" || { tail -40 target/demo.log; echo "demo: FAILED"; exit 1; }
if [ "${SNAPCKPT_SKIP_VM:-0}" != 1 ] && [ -f integration/vm/lvm-tests.sh ]; then
  bash integration/vm/lvm-tests.sh
  bash integration/vm/migrate-tests.sh
  bash integration/vm/kmod-tests.sh
fi
