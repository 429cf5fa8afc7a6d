#!/bin/bash
# Guest side of integration/vm/migrate-tests.sh: export/import of LVM thin snapshots between
# two volume groups standing in for two machines (vga on /dev/vdb, vgb on /dev/vdc), as root in
# the QEMU guest. For ext4 and xfs: a thin LV on each, mounted at /mnt/a and /mnt/b; `ufiles
# setup` holds unlinked files on A; `take --engine none` with a job snapshotting /mnt/a (lvm); `export` (the stream is
# the allocated blocks, not the LV's size); a stream with a flipped byte is refused with no LV
# made; `import --mount /mnt/b`; `delete` on A; `restart --snapshot --exec ufiles report` on B
# shows the files as recorded; `delete` on B leaves no snapckpt LV. Prints `PASS`/`FAIL` lines,
# writes them and `N passed, M failed` to /share/summary.
set -u
export LVM_SUPPRESS_FD_WARNINGS=1
SHARE=${SHARE:-/share}
SNAP=$SHARE/snapckpt
UF=$SHARE/ufiles
W=/tmp/migtest
SUMMARY=$SHARE/summary
mkdir -p "$W" /mnt/a /mnt/b
: > "$SUMMARY"
PASSED=0
FAILED=0
pass() { echo "PASS $1"; echo "PASS $1" >> "$SUMMARY"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; echo "FAIL $1: $2" >> "$SUMMARY"; FAILED=$((FAILED + 1)); }
finish() { echo "$PASSED passed, $FAILED failed" | tee -a "$SUMMARY"; [ "$FAILED" = 0 ]; exit $?; }
snapckpt_lvs() { lvs --noheadings -o lv_name "$1" 2>/dev/null | grep -c snapckpt- || true; }

modprobe dm_thin_pool || { fail modules "modprobe dm_thin_pool"; finish; }
for x in a:vdb b:vdc; do
  vg=vg${x%%:*}; dev=/dev/${x##*:}
  pvcreate -q -y "$dev" > /dev/null && vgcreate -q "$vg" "$dev" > /dev/null \
    && lvcreate -q -y -L 1500M -T "$vg/pool" > /dev/null 2>&1 || { fail vg-setup "$vg on $dev"; finish; }
done
pass vg-setup

run_case() {
  local fs=$1 c=$1 pid id rc
  echo "--- case $c"
  for m in a b; do
    lvcreate -q -y -V 512M -T "vg$m/pool" -n "data_$fs" > /dev/null 2>&1 \
      && if [ "$fs" = xfs ]; then mkfs.xfs -q -f "/dev/vg$m/data_$fs"; else mkfs.ext4 -q -F "/dev/vg$m/data_$fs"; fi > /dev/null 2>&1 \
      && mount "/dev/vg$m/data_$fs" "/mnt/$m" || { fail "$c-setup" "LV on vg$m"; return; }
  done
  mkdir -p /mnt/a/d
  head -c 32M /dev/urandom > /mnt/a/d/big
  rm -rf "$W"/*
  # (no tmpfile: take currently refuses an O_TMPFILE fd in its restartability check)
  "$UF" setup /mnt/a/d ab orphan:10485760 twofds > "$W/ufiles.out" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q '^ready' "$W/ufiles.out" && break; sleep 0.1; done
  grep '^FD ' "$W/ufiles.out" > "$W/first"
  printf '[[filesystem]]\nmount = "/mnt/a"\nsnapshot = "lvm"\n' > "$W/job.toml"
  "$SNAP" take --pid "$pid" --engine none --job "$W/job.toml" --image-root "$W/imga" > "$W/take.out" 2>&1 \
    || { fail "$c-take" "$(tr '\n' ' ' < "$W/take.out")"; kill -9 "$pid"; return; }
  id=$(awk '/^checkpoint /{print $2; exit}' "$W/take.out")
  pass "$c-take"
  if "$SNAP" export "$id" -o "$W/s.snap" --image-root "$W/imga" 2> "$W/export.err"; then
    local n; n=$(stat -c %s "$W/s.snap")
    if [ "$n" -gt $((32 << 20)) ] && [ "$n" -lt $((64 << 20)) ]; then pass "$c-export-sparse ($n bytes)"; else fail "$c-export-sparse" "stream is $n bytes for 32 MiB of data on a 512 MiB LV"; fi
  else
    fail "$c-export" "$(tr '\n' ' ' < "$W/export.err")"; kill -9 "$pid"; return
  fi
  python3 -c "import sys; b=bytearray(open(sys.argv[1],'rb').read()); b[len(b)//2]^=1; open(sys.argv[2],'wb').write(b)" "$W/s.snap" "$W/bad.snap"
  if "$SNAP" import "$W/bad.snap" --mount /mnt/b --image-root "$W/imgb" > /dev/null 2> "$W/bad.err"; then
    fail "$c-flipped-refused" "a stream with a flipped byte was imported"
  elif [ "$(snapckpt_lvs vgb)" != 0 ] || [ -n "$(ls -A "$W/imgb" 2>/dev/null)" ]; then
    fail "$c-flipped-refused" "something was left: $(lvs --noheadings -o lv_name vgb | tr '\n' ' ') $(ls -A "$W/imgb")"
  else
    pass "$c-flipped-refused"
  fi
  "$SNAP" import "$W/s.snap" --mount /mnt/b --image-root "$W/imgb" > "$W/import.out" 2>&1 \
    && [ "$(snapckpt_lvs vgb)" = 1 ] && pass "$c-import" || fail "$c-import" "$(tr '\n' ' ' < "$W/import.out")"
  "$SNAP" delete "$id" --image-root "$W/imga" > /dev/null 2>&1 && [ "$(snapckpt_lvs vga)" = 0 ] \
    && pass "$c-delete-on-a" || fail "$c-delete-on-a" "snapckpt LVs left on vga"
  kill -9 "$pid"; wait "$pid" 2>/dev/null
  rc=0
  "$SNAP" restart "$id" --snapshot --image-root "$W/imgb" --exec "$UF" report > "$W/r.out" 2> "$W/r.err" || rc=$?
  if [ "$rc" = 0 ] && [ -n "$(grep '^FD ' "$W/r.out")" ] && diff <(grep '^FD ' "$W/first") <(grep '^FD ' "$W/r.out") > "$W/r.diff"; then
    pass "$c-restart-on-b"
  else
    fail "$c-restart-on-b" "rc $rc: $(tr '\n' ' ' < "$W/r.err") $(tr '\n' ' ' < "$W/r.diff" 2>/dev/null)"
  fi
  "$SNAP" delete "$id" --force --image-root "$W/imgb" > "$W/del.out" 2>&1 && [ "$(snapckpt_lvs vgb)" = 0 ] \
    && pass "$c-delete-on-b" || fail "$c-delete-on-b" "$(tr '\n' ' ' < "$W/del.out") $(lvs --noheadings -o lv_name vgb | tr '\n' ' ')"
  umount /mnt/a /mnt/b
  lvremove -q -y -f "vga/data_$fs" "vgb/data_$fs" > /dev/null 2>&1
}

run_case ext4
run_case xfs
finish
