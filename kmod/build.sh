#!/bin/bash
# Build snapckpt_relink.ko against Debian's headers for the test guest's kernel.
#
# Usage: kmod/build.sh [OUT_DIR]      (as root; prints the path of the built .ko on stdout)
#
# The guest kernel (KVER, e.g. 6.1.0-50-amd64) comes from $SNAPCKPT_KMOD_KVER, else from the
# cached guest image ($SNAPCKPT_VM_CACHE/kernel-version, default /var/cache/snapckpt-vm; run
# integration/vm/build-image.sh first), else from linux-image-amd64 in the bookworm suite.
# linux-headers-KVER, linux-headers-<abi>-common and linux-kbuild-<x.y> of that version are
# fetched with `apt-get download` and unpacked with `dpkg -x` into
# $SNAPCKPT_KMOD_CACHE/KVER (default /var/cache/snapckpt-kmod): the host's dpkg database is not
# touched. Cached: done once per KVER. The module is built with gcc-12 (what Debian built the
# kernel with) in OUT_DIR (default $SNAPCKPT_KMOD_CACHE/KVER/build), a copy of kmod/; make
# rebuilds only when a source changed. Non-interactive, flock-serialised.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SNAPCKPT_KMOD_CACHE:-/var/cache/snapckpt-kmod}
VMCACHE=${SNAPCKPT_VM_CACHE:-/var/cache/snapckpt-vm}
log() { echo "[kmod-build] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v gcc-12 >/dev/null || die "gcc-12 missing (apt-get install gcc-12)"
command -v make >/dev/null || die "make missing"

# --- which kernel ----------------------------------------------------------------------------
KVER=${SNAPCKPT_KMOD_KVER:-}
[ -n "$KVER" ] || KVER=$(cat "$VMCACHE/kernel-version" 2>/dev/null || true)
if [ -z "$KVER" ]; then
  # what debootstrap installs: linux-image-amd64 of the bookworm suite (not -security)
  v=$(apt-cache madison linux-image-amd64 | awk -F'|' '$3 ~ / bookworm\/main / {gsub(/ /, "", $2); print $2}' | head -n1 || true)
  [ -n "$v" ] || die "no guest kernel version: build the guest image or set SNAPCKPT_KMOD_KVER"
  KVER=$(apt-cache show "linux-image-amd64=$v" | sed -n 's/^Depends: linux-image-\([^ ,]*\) .*/\1/p' | head -n1 || true)
  [ -n "$KVER" ] || die "cannot tell the kernel of linux-image-amd64 $v"
fi
case "$KVER" in *-amd64) ;; *) die "unexpected kernel version '$KVER'" ;; esac
ABI=${KVER%-amd64}                        # 6.1.0-50
MM=$(echo "$KVER" | cut -d. -f1,2)        # 6.1
# the Debian version: the one apt knows for these ABI-named packages; if the guest image is
# cached, it must be the one its kernel says it is (bzImage carries "... Debian 6.1.176-1 ...")
DEBVER=$(apt-cache show "linux-headers-$KVER" 2>/dev/null | awk '/^Version:/{print $2}' | head -n1 || true)
[ -n "$DEBVER" ] || die "apt knows no linux-headers-$KVER (apt-get update?)"
if [ -s "$VMCACHE/vmlinuz" ] && [ "$(cat "$VMCACHE/kernel-version" 2>/dev/null)" = "$KVER" ]; then
  GV=$(grep -aoE "$KVER \(debian-kernel@lists\.debian\.org\)[^(]* Debian [^ ]+" "$VMCACHE/vmlinuz" | head -n1 | awk '{print $NF}' || true)
  [ -z "$GV" ] || [ "$GV" = "$DEBVER" ] || die "guest kernel is Debian $GV, apt offers headers $DEBVER"
fi

D=$CACHE/$KVER
H=$D/root/usr/src/linux-headers-$KVER
OUT=${1:-$D/build}
mkdir -p "$D"
exec 9>"$D/.lock"
flock 9

# --- headers (once per version) ----------------------------------------------------------------
if [ "$(cat "$D/stamp" 2>/dev/null)" != "$DEBVER" ]; then
  log "fetching headers for $KVER (Debian $DEBVER) into $D"
  rm -rf "$D/debs" "$D/root" "$D/stamp"
  mkdir -p "$D/debs" "$D/root"
  chmod 755 "$D/debs"
  (cd "$D/debs" && apt-get download -q "linux-headers-$KVER=$DEBVER" "linux-headers-$ABI-common=$DEBVER" \
    "linux-kbuild-$MM=$DEBVER" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
    die "apt-get download failed"
  for deb in "$D"/debs/*.deb; do dpkg -x "$deb" "$D/root"; done
  # the flavour's Makefile includes the common one by absolute path: point it at our copy
  sed -i "s#^include /usr/src/#include $D/root/usr/src/#" "$H/Makefile"
  [ -x "$H/scripts/basic/fixdep" ] && [ -f "$H/Module.symvers" ] || die "unpacked headers look incomplete"
  echo "$DEBVER" > "$D/stamp"
fi

# --- the module ----------------------------------------------------------------------------------
mkdir -p "$OUT"
cp -p "$HERE/Makefile" "$HERE/snapckpt_relink.c" "$HERE/snapckpt_relink.h" "$OUT/"
log "make -C $H M=$OUT (gcc-12)"
make -s -C "$H" M="$OUT" CC=gcc-12 modules >&2 2> >(grep -v 'Skipping BTF generation' >&2)
KO=$OUT/snapckpt_relink.ko
[ -s "$KO" ] || die "no $KO"
grep -aq "vermagic=$KVER " "$KO" || die "$KO has the wrong vermagic"
echo "$KO"
