#!/bin/bash
# Build (once, cached) the Debian bookworm QEMU guest used by snapckpt's LVM tests.
#
# Usage: integration/vm/build-image.sh [CACHE_DIR]      (default /var/cache/snapckpt-vm)
#
# Produces CACHE_DIR/{vmlinuz,initrd.img,root.img,stamp}. root.img is a pristine raw ext4
# image that run.sh never writes to (each run boots a qcow2 overlay of it). The build is
# skipped when CACHE_DIR/stamp holds the sha256 of this script (the guest's PID-1 init is
# part of this script, so editing either triggers a rebuild). Concurrent callers are
# serialised with flock. Installs the host tools it needs (qemu-system-x86, qemu-utils,
# debootstrap) with apt, using a private sources/lists dir: /etc/apt is never edited.
# Non-interactive, needs root. Debootstrap output goes to CACHE_DIR/build.log.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${1:-/var/cache/snapckpt-vm}
SUITE=bookworm
ROOT_SIZE=${SNAPCKPT_VM_ROOT_SIZE:-4G}
# Guest packages (minbase + these). criu/iptables: bookworm's criu 3.17 works on the
# guest's 6.1 kernel, handy for end-to-end tests inside the guest.
GUEST_PKGS=linux-image-amd64,initramfs-tools,lvm2,thin-provisioning-tools,btrfs-progs,xfsprogs,e2fsprogs,libbtrfsutil1,kmod,udev,procps,util-linux,iproute2,python3-minimal,criu,iptables,psmisc,strace,lsof,jq,file

log() { echo "[build-image] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive

MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
[ -n "$MIRROR" ] || die "no URIs: line in /etc/apt/sources.list.d/debian.sources"

TMP=""
cleanup() {
  local rc=$?
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    # debootstrap/chroot may leave proc/sys/dev mounts behind on failure: never rm through them
    awk -v p="$TMP/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$TMP"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. host tools (always checked, cheap when present) -----------------------------------
apt_private() {  # apt-get with a private sources dir + lists dir; $1.. = apt-get args
  local d=$TMP/apt
  "apt-get" -o Dir::Etc::SourceParts="$d/sources" -o Dir::Etc::SourceList="$d/none.list" \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o APT::Get::List-Cleanup=false -q -y "$@"
}
need_tools() {
  command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null &&
    command -v debootstrap >/dev/null && command -v mkfs.ext4 >/dev/null
}
if ! need_tools; then
  TMP=$(mktemp -d /tmp/snapckpt-vm-apt.XXXXXX)
  chmod 755 "$TMP"   # apt downloads as _apt
  mkdir -p "$TMP/apt/sources" "$TMP/apt/lists/partial"
  cp /etc/apt/sources.list.d/debian.sources "$TMP/apt/sources/"
  PKGS=(); UPDATED=0
  command -v debootstrap >/dev/null || PKGS+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || PKGS+=(e2fsprogs)
  command -v qemu-img >/dev/null || PKGS+=(qemu-utils)
  if command -v qemu-system-x86_64 >/dev/null; then
    :
  elif dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    # qemu-utils here is a bookworm-backports build (10.x) that Breaks bookworm's
    # qemu-system-common 7.2: take qemu-system-x86 (and only it, with the dependencies it
    # needs) from backports. Nothing else gets -t: that would upgrade e.g. e2fsprogs too.
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$MIRROR" "$SUITE" > "$TMP/apt/sources/bpo.sources"
    log "installing qemu-system-x86 from $SUITE-backports"
    apt_private update >/dev/null; UPDATED=1
    apt_private install --no-install-recommends -t "$SUITE-backports" qemu-system-x86 >/dev/null
  else
    PKGS+=(qemu-system-x86)
  fi
  if [ ${#PKGS[@]} -gt 0 ]; then
    log "installing ${PKGS[*]}"
    [ "$UPDATED" = 1 ] || apt_private update >/dev/null
    apt_private install --no-install-recommends "${PKGS[@]}" >/dev/null
  fi
  rm -rf "$TMP"; TMP=""
  need_tools || die "host tools still missing after apt-get install"
fi

# --- 2. cache check (under an exclusive lock) ----------------------------------------------
HASH=$(sha256sum "$SELF" | cut -d' ' -f1)
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
cached() {
  [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$HASH" ] &&
    [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initrd.img" ] && [ -s "$CACHE/root.img" ]
}
if cached; then
  log "cached image is up to date ($CACHE, stamp ${HASH:0:12})"
  exit 0
fi

START=$(date +%s)
log "building guest image into $CACHE (mirror $MIRROR); log: $CACHE/build.log"
rm -f "$CACHE/stamp"
TMP=$(mktemp -d "$CACHE/build.XXXXXX")
R=$TMP/rootfs
: > "$CACHE/build.log"
run_logged() {  # run "$@" with output into build.log; show its tail on failure
  if ! "$@" >>"$CACHE/build.log" 2>&1; then
    log "FAILED: $*"; tail -n 40 "$CACHE/build.log" >&2; exit 1
  fi
}

# --- 3. root filesystem ---------------------------------------------------------------------
log "debootstrap $SUITE minbase (takes ~1.5-3 min)"
run_logged debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$R" "$MIRROR"
KVER=$(ls "$R/lib/modules" | sort -V | tail -n1)
[ -n "$KVER" ] && [ -e "$R/boot/vmlinuz-$KVER" ] || die "no kernel installed in the guest"
log "guest kernel $KVER"

# --- 4. PID-1 init: mounts, modules, lo, udev, 9p share, run /share/test.sh, power off -------
cat > "$R/sbin/vmtest-init" <<'EOF'
#!/bin/bash
# PID 1 of the snapckpt test guest (written by integration/vm/build-image.sh).
# No `set -e`: PID 1 must never exit (that panics the kernel); it always powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 VMTEST=1
up() { cut -d' ' -f1 /proc/uptime; }
poweroff_now() { sync; echo o > /proc/sysrq-trigger; sleep 30; }
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys  || mount -t sysfs sys /sys
mountpoint -q /dev  || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mountpoint -q /run || mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/lvm
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
# cgroups laid out like the host: v1 freezer + v2 at /sys/fs/cgroup/{freezer,unified}
mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/freezer /sys/fs/cgroup/unified
mount -t cgroup -o freezer freezer /sys/fs/cgroup/freezer || echo "VMTEST: WARNING: no v1 freezer"
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || echo "VMTEST: WARNING: no cgroup2"
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname vmtest
ip link set lo up
for m in dm_mod dm_thin_pool dm_snapshot btrfs xfs ext4 loop 9pnet_virtio 9p; do
  modprobe "$m" || echo "VMTEST: WARNING: modprobe $m failed"
done
echo "VMTEST: init reached, uptime=$(up)s kernel=$(uname -r)"
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add
udevadm settle --timeout=60
echo "VMTEST: udev settled, uptime=$(up)s"
lvmpolld -t 0 || echo "VMTEST: WARNING: lvmpolld did not start"   # systemd would socket-activate it
mkdir -p /share
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /share; then
  echo "VMTEST: 9p mount failed"; poweroff_now
fi
rm -f /share/exit-code
if [ -f /share/test.sh ]; then
  echo "VMTEST: running /share/test.sh"
  cd /share
  if [ -x /share/test.sh ]; then /share/test.sh </dev/null 2>&1; else bash /share/test.sh </dev/null 2>&1; fi
  rc=$?
  cd /
else
  echo "VMTEST: no /share/test.sh"; rc=127
fi
echo "$rc" > /share/exit-code.tmp && mv /share/exit-code.tmp /share/exit-code
echo "VMTEST: test.sh exit code $rc, uptime=$(up)s"
sync
[ -f /share/keepalive ] && exec /bin/bash
poweroff_now
EOF
chmod 755 "$R/sbin/vmtest-init"
echo vmtest > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n::1 localhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
printf '/dev/vda / ext4 defaults 0 1\n' > "$R/etc/fstab"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin

# --- 5. small initramfs: only what mounts an ext4 root on virtio-blk ------------------------
rm -rf "$R/etc/initramfs-tools-min"
cp -a "$R/etc/initramfs-tools" "$R/etc/initramfs-tools-min"
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools-min/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$R/etc/initramfs-tools-min/modules"
log "mkinitramfs"
run_logged chroot "$R" mkinitramfs -d /etc/initramfs-tools-min -o /boot/initrd-min.img "$KVER"
cp "$R/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
mv "$R/boot/initrd-min.img" "$TMP/initrd.img"
rm -f "$R"/boot/initrd.img-*     # the big default initrd is not used

# --- 6. root image (mke2fs -d copies the tree: no loop mount needed) -------------------------
log "mkfs.ext4 -d root.img ($ROOT_SIZE, sparse)"
truncate -s "$ROOT_SIZE" "$TMP/root.img"
run_logged mkfs.ext4 -q -F -L vmroot -d "$R" "$TMP/root.img"
chmod 444 "$TMP/root.img"

# --- 7. publish atomically, stamp last -------------------------------------------------------
mv -f "$TMP/vmlinuz" "$CACHE/vmlinuz"
mv -f "$TMP/initrd.img" "$CACHE/initrd.img"
mv -f "$TMP/root.img" "$CACHE/root.img"
echo "$KVER" > "$CACHE/kernel-version"
echo "$HASH" > "$CACHE/stamp"
log "done in $(( $(date +%s) - START ))s: kernel $KVER, rootfs $(du -sh "$R" | cut -f1), root.img allocated $(du -h "$CACHE/root.img" | cut -f1)"
