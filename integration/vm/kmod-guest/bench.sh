#!/bin/bash
# Guest side of bench/kmod-take.sh (run as /share/test.sh): snapckpt take time vs the size of a
# dense orphan on ext4 over an LVM thin LV, with the snapckpt_relink module loaded (the orphan
# is linked: method kernel-link) and without it (copied: copy-range / sparse-copy).
# Expects in /share: snapckpt_relink.ko, snapckpt, ufiles, sc-lib.sh, optionally `env`
# (SIZES="1 16 64 256 1024" in MiB, REPS=1, MODES="module copy").
#
# For each size: one ufiles workload holding the orphan (`dense:N`), then REPS times for each
# mode `snapckpt take --pid P --engine none --job J` (J: /mnt/data, snapshot = "lvm") (sync before; the task is thawed
# and goes on), the record's method and timings, `snapckpt delete --force`, fstrim (the copies'
# blocks back to the pool). Writes /share/bench.tsv:
#   size_mib mode rep take_s relink_ms snapshot_ms frozen_ms method bytes_copied
# and prints a table. Exits non-zero if a take fails or a method is not the expected one.
set -u
export LVM_SUPPRESS_FD_WARNINGS=1
SHARE=${SHARE:-/share}
KO=$SHARE/snapckpt_relink.ko
W=/tmp/kmodbench
SIZES="1 16 64 256 1024"
REPS=1
MODES="module copy"
[ -f "$SHARE/env" ] && . "$SHARE/env"
mkdir -p "$W"
OUT=$SHARE/bench.tsv
: > "$OUT"
FAILED=0
pass() { :; }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
note() { echo "NOTE $*"; }
timed() { echo "TIME $1 $2s"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b - a}'; }
log() { echo "--- $* (uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
. "$SHARE/sc-lib.sh"

loaded() { grep -q '^snapckpt_relink ' /proc/modules; }
module() { # module on|off
  if [ "$1" = on ]; then loaded || insmod "$KO"; else ! loaded || rmmod snapckpt_relink; fi
  udevadm settle --timeout=10
}

log "guest $(uname -r), $(nproc) CPU, $(awk '/MemTotal/{print $2 " kB"}' /proc/meminfo); SIZES=$SIZES REPS=$REPS MODES=$MODES"
"$SNAP" --version || { echo "FAIL snapckpt does not run"; exit 1; }
pvcreate -q -y /dev/vdb > /dev/null && vgcreate -q vgt /dev/vdb > /dev/null &&
  lvcreate -q -y -l 90%FREE -T vgt/pool > /dev/null 2>&1 &&
  lvcreate -q -y -V 3G -T vgt/pool -n bench > /dev/null 2>&1 &&
  mkfs.ext4 -q -F /dev/vgt/bench > /dev/null 2>&1 && mount /dev/vgt/bench /mnt/data && mkdir -p /mnt/data/d ||
  { echo "FAIL LVM/ext4 setup"; exit 1; }

JOB=$(sc_job)
for mib in $SIZES; do
  log "size $mib MiB"
  if ! uf_start /mnt/data/d "dense:$((mib << 20))"; then fail "ufiles-$mib" "not ready: $(tr '\n' ' ' < "$UFOUT")"; continue; fi
  for ((rep = 1; rep <= REPS; rep++)); do
    for mode in $MODES; do
      if [ "$mode" = module ]; then module on; want='kernel-link'; else module off; want='copy-range|sparse-copy'; fi
      sc_take "b-$mib-$mode-$rep" "$UFPID" "$JOB"
      if [ -z "$ID" ]; then fail "take-$mib-$mode" "exit $TAKE_RC: $(tr '\n' ' ' < "$W/b-$mib-$mode-$rep.take.err")"; continue; fi
      method=$(jq -r '[.objects[] | select(.class == "orphan") | .relinked.method] | join(",")' "$(ckjson)")
      bytes=$(jq -r '[.objects[].relinked.bytes_copied // 0] | add' "$(ckjson)")
      echo "$mib $mode $rep $TAKE_S $(sc_timing relink_ms) $(sc_timing snapshot_ms) $(sc_timing frozen_ms) $method $bytes" | tee -a "$OUT"
      [[ "$method" =~ ^($want)$ ]] || fail "method-$mib-$mode" "$method, want $want"
      sc_delete --force || fail "delete-$mib-$mode" "$(tr '\n' ' ' < "$W/del.err")"
      fstrim /mnt/data 2>/dev/null
    done
  done
  uf_stop
done
module on
umount /mnt/data
vgremove -q -y vgt > /dev/null 2>&1

echo "=== take time vs dense orphan size (ext4 on an LVM thin LV, TCG guest; seconds / ms)"
printf '%-8s %-7s %8s %10s %10s %10s %-12s %12s\n' size_MiB mode take_s relink_ms snap_ms frozen_ms method bytes_copied
while read -r mib mode rep t r s f m b; do
  printf '%-8s %-7s %8s %10s %10s %10s %-12s %12s\n' "$mib" "$mode" "$t" "$r" "$s" "$f" "$m" "$b"
done < "$OUT"
echo "bench: $FAILED failure(s)"
[ "$FAILED" = 0 ]
