#!/bin/bash
# Smoke test of the QEMU/LVM guest harness: builds the image (cached), boots the guest once
# and checks LVM thin snapshots (xfs) and classic COW snapshots (ext4) inside it.
# Usage: integration/vm/smoke-test.sh        (env as for run.sh; exits non-zero on failure)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SNAPCKPT_VM_CACHE:-/var/cache/snapckpt-vm}

SHARE=$(mktemp -d "${TMPDIR:-/tmp}/snapckpt-vm-smoke.XXXXXX")
trap 'rm -rf "$SHARE"' EXIT

t0=$(date +%s.%N)
"$HERE/build-image.sh" "$CACHE"
t1=$(date +%s.%N)

cat > "$SHARE/test.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
step() { echo "=== $* (uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
fail() { echo "SMOKE FAIL: $*"; exit 1; }
trap 'echo "SMOKE FAIL: command failed (line $LINENO): $BASH_COMMAND"' ERR
mkdir -p /mnt/thin /mnt/tsnap /mnt/lin /mnt/lsnap
step "guest: $(uname -r), $(ldd --version | head -n1), $(lvm version | head -n1 | tr -s ' ')"
ls /usr/lib/x86_64-linux-gnu/libbtrfsutil.so.1 >/dev/null || fail "libbtrfsutil.so.1 missing"
for m in dm_thin_pool dm_snapshot btrfs xfs; do grep -q "^$m " /proc/modules || fail "module $m not loaded"; done

step "LVM thin pool + thin LV (xfs)"
pvcreate -y -q /dev/vdb
vgcreate -q vg0 /dev/vdb
lvcreate -q -y -L 1G -T vg0/pool
lvcreate -q -y -V 2G -T vg0/pool -n thin1
mkfs.xfs -q /dev/vg0/thin1
mount /dev/vg0/thin1 /mnt/thin
echo "thin-origin-data" > /mnt/thin/file.txt
step "thin snapshot of the mounted origin"
lvcreate -q -y -s -n thin1_snap vg0/thin1          # no size => thin snapshot; LVM freezes the fs
echo "changed-after-snapshot" > /mnt/thin/file.txt
lvs --noheadings -o lv_attr vg0/thin1_snap | grep -q '^ *V.*k *$' || fail "thin snapshot lacks the activation-skip flag"
[ ! -e /dev/vg0/thin1_snap ] || fail "thin snapshot was activated without -K"
lvchange -q -ay -K vg0/thin1_snap
if mount -o ro /dev/vg0/thin1_snap /mnt/tsnap 2>/dev/null; then
  fail "xfs snapshot mounted beside its origin WITHOUT nouuid (expected a duplicate-UUID refusal)"
fi
mount -o ro,nouuid /dev/vg0/thin1_snap /mnt/tsnap
[ "$(cat /mnt/tsnap/file.txt)" = "thin-origin-data" ] || fail "thin snapshot content: $(cat /mnt/tsnap/file.txt)"
[ "$(cat /mnt/thin/file.txt)" = "changed-after-snapshot" ] || fail "origin content"
echo "thin snapshot OK"

step "linear LV (ext4) + classic COW snapshot"
lvcreate -q -y -L 512M -n lin vg0
mkfs.ext4 -q /dev/vg0/lin
mount /dev/vg0/lin /mnt/lin
echo "linear-origin-data" > /mnt/lin/file.txt
lvcreate -q -y -s -L 128M -n lin_snap vg0/lin       # with a size => classic COW snapshot, active
echo "changed-after-snapshot" > /mnt/lin/file.txt
mount -o ro /dev/vg0/lin_snap /mnt/lsnap
[ "$(cat /mnt/lsnap/file.txt)" = "linear-origin-data" ] || fail "COW snapshot content: $(cat /mnt/lsnap/file.txt)"
[ "$(cat /mnt/lin/file.txt)" = "changed-after-snapshot" ] || fail "origin content"
echo "COW snapshot OK"

step "lvs JSON report"
lvs --reportformat json -o lv_name,lv_uuid,vg_name,lv_attr,origin,pool_lv > /tmp/lvs.json
cat /tmp/lvs.json
python3 - /tmp/lvs.json <<'PY'
import json, sys
lvs = {lv["lv_name"]: lv for lv in json.load(open(sys.argv[1]))["report"][0]["lv"]}
def want(name, **kv):
    lv = lvs[name]
    for k, v in kv.items():
        assert lv[k] == v, f"{name}.{k} = {lv[k]!r}, want {v!r}"
    assert len(lv["lv_uuid"]) == 38, lv["lv_uuid"]
want("thin1", vg_name="vg0", origin="", pool_lv="pool")
want("thin1_snap", vg_name="vg0", origin="thin1", pool_lv="pool")
want("lin", vg_name="vg0", origin="", pool_lv="")
want("lin_snap", vg_name="vg0", origin="lin", pool_lv="")
assert lvs["thin1_snap"]["lv_attr"][0] == "V" and lvs["thin1_snap"]["lv_attr"][9] == "k"
assert lvs["lin"]["lv_attr"][0] == "o" and lvs["lin_snap"]["lv_attr"][0] == "s"
print("lvs JSON OK")
PY

step "cleanup"
umount /mnt/tsnap /mnt/thin /mnt/lsnap /mnt/lin
lvremove -q -y vg0/thin1_snap vg0/lin_snap
vgremove -q -y vg0
trap - ERR
echo "SMOKE PASS"
EOF
chmod +x "$SHARE/test.sh"

rc=0
"$HERE/run.sh" "$SHARE" 600 || rc=$?
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN{printf "[smoke] build-image.sh: %.1fs, run.sh: %.1fs\n", b - a, c - b}' >&2
if [ "$rc" = 0 ] && grep -q '^SMOKE PASS' "$SHARE/console.log"; then
  echo "[smoke] PASS" >&2
else
  echo "[smoke] FAIL (run.sh exit $rc)" >&2
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
