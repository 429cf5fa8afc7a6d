#!/usr/bin/env bash
# Install what snapckpt needs to build and run on Debian 12 (as root): build dependencies of
# libbtrfsutil, filesystem tools for the tests and the demo, and CRIU 4.x in a private prefix.
# Idempotent and quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="btrfs-progs xfsprogs e2fsprogs libbtrfsutil-dev libclang-dev clang pkg-config util-linux gcc libc6-dev iproute2 lsof openssh-server openssh-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
bash scripts/install-criu.sh
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
