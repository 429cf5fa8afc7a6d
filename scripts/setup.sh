#!/usr/bin/env bash
# Install what snapckpt needs to build and run on Debian 12 (as root): build dependencies of
# libbtrfsutil, filesystem tools for the tests and the demo, and CRIU 4.x in a private prefix.
# Idempotent and quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="btrfs-progs xfsprogs e2fsprogs libbtrfsutil-dev libclang-dev clang pkg-config util-linux gcc libc6-dev iproute2 lsof openssh-server openssh-client strace"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
# The applications the integration tests checkpoint (integration/tests/apps.rs) and bench/ measures.
# Their system services are neither started nor enabled: the tests run their own instances.
APP_PKGS="mariadb-server mariadb-client nginx sqlite3 python3"
missing=""
for p in $APP_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing (services not started or enabled)"
  # policy-rc.d 101: invoke-rc.d starts nothing during the install (kept if one exists already)
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  trap - EXIT
  # the packages enable their units: undo that (works without a running systemd too)
  if command -v systemctl >/dev/null; then
    for u in mariadb.service nginx.service; do
      systemctl disable --quiet "$u" 2>/dev/null || true
      systemctl stop "$u" 2>/dev/null || true
    done
  fi
fi
bash scripts/install-criu.sh
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
