#!/bin/bash
# Guest side of integration/vm/lvm-tests.sh: snapckpt's LVM backend, end to end, as root in
# the QEMU guest (see integration/vm/README.md). Expects in /share: snapckpt (dynamic, glibc
# 2.36 + libbtrfsutil.so.1) and ufiles (static, from integration/progs/ufiles.c).
#
# For thin+ext4, thin+xfs, classic+ext4, classic+xfs on /dev/vdb:
#   make the LV and filesystem, mount it at /mnt/data, start `ufiles setup` (unlinked files
#   of several kinds), `snapckpt take --engine none` with a job naming the filesystem
#   (snapshot = "lvm"), check the LV and `snapckpt list`, change the live filesystem, kill the
#   workload, `snapckpt restart --snapshot --exec ufiles report` and compare its FD lines with
#   the workload's first report; thin: a second restart; classic: a second restart is refused;
#   `snapckpt delete` refused while mounted, then `--force`; no snapckpt LV left.
# Then with the CRIU engine (the guest's criu 3.17) on thin+ext4 and thin+xfs: take, the task
# killed, two restarts side by side, each restored task reports the fds it had; delete.
# Then CRIU pre-dump (the guest's kernel tracks memory: soft-dirty) on thin+ext4: a task with
# 256 MiB of resident memory in a known pattern and an unlinked file (memhold), a take without
# pre-dump (tasks left running) for comparison, a take with `pre_dump = true` (memory dirtied
# between its first and second round), the rounds checked, a restart, the restored task checks
# its memory and its unlinked file. NOTE lines give the frozen times and pages written.
# Prints `PASS name` / `FAIL name: why` lines, writes them and a last line `N passed, M failed`
# to /share/summary, and exits non-zero if anything failed.
set -u
export LVM_SUPPRESS_FD_WARNINGS=1
SHARE=${SHARE:-/share}
SNAP=$SHARE/snapckpt
UF=$SHARE/ufiles
MH=$SHARE/memhold
IR=/var/lib/snapckpt/images
VG=vgsc
W=/tmp/lvmtest
SUMMARY=$SHARE/summary
mkdir -p "$W" /mnt/data
: > "$SUMMARY"

PASSED=0
FAILED=0
pass() { echo "PASS $1"; echo "PASS $1" >> "$SUMMARY"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; echo "FAIL $1: $2" >> "$SUMMARY"; FAILED=$((FAILED + 1)); }
check() { # check NAME WHY-IF-FAILED COMMAND...
  local name=$1 why=$2; shift 2
  if "$@"; then pass "$name"; else fail "$name" "$why"; fi
}
finish() {
  echo "$PASSED passed, $FAILED failed" | tee -a "$SUMMARY"
  [ "$FAILED" = 0 ]
  exit $?
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b - a}'; }
log() { echo "--- $* (uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
TIMES=()

# --- can the guest run snapckpt at all? ----------------------------------------------------
log "guest $(uname -r), $(ldd --version | head -n1), $(lvm version | head -n1 | tr -s ' ')"
missing=$(ldd "$SNAP" 2>&1 | grep -E 'not found|not a dynamic' || true)
if [ -n "$missing" ] || ! "$SNAP" --version > "$W/version" 2>&1; then
  fail binary-runs "the guest cannot run $SNAP: ${missing:-$(cat "$W/version")}"
  finish
fi
pass binary-runs
[ -x "$UF" ] || { fail ufiles-present "$UF missing"; finish; }

modprobe dm_thin_pool && modprobe dm_snapshot || { fail modules "modprobe dm_thin_pool dm_snapshot failed"; finish; }
pvcreate -q -y /dev/vdb > /dev/null && vgcreate -q "$VG" /dev/vdb > /dev/null \
  && lvcreate -q -y -L 1536M -T "$VG/pool" > /dev/null 2>&1 \
  || { fail vg-setup "pvcreate/vgcreate/thin pool on /dev/vdb failed"; finish; }

# snapckpt LVs in the VG, one name per line
snapckpt_lvs() {
  lvs --reportformat json -o lv_name,lv_tags "$VG" 2>/dev/null \
    | jq -r '.report[].lv[] | select((.lv_tags | split(",") | index("snapckpt")) or (.lv_name | startswith("snapckpt-"))) | .lv_name'
}
# one field of one LV
lvfield() { lvs --reportformat json -o "$2" "$VG/$1" 2>/dev/null | jq -r ".report[0].lv[0].$2 // \"\""; }
fd_lines() { grep '^FD ' "$1" || true; }

# Wait up to $3 seconds for $2 lines matching regexp $1 in file $4.
wait_lines() {
  local re=$1 n=$2 t=$3 f=$4 i got
  for ((i = 0; i < t * 10; i++)); do
    got=$(grep -c -- "$re" "$f" 2>/dev/null)
    [ "${got:-0}" -ge "$n" ] && return 0
    sleep 0.1
  done
  return 1
}

# Undo whatever a failed case left behind.
scrub() {
  local m
  for m in $(awk '$2 ~ "^/mnt/r[0-9]" {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
  mountpoint -q /mnt/data && umount -l /mnt/data
  lvremove -q -y -f "@snapckpt" > /dev/null 2>&1
  rm -rf "$IR"/* "$IR"/.[!.]* 2>/dev/null
  rm -rf /mnt/r0 /mnt/r1 /mnt/r2
}

# restart_and_compare CASE TAG [MOUNT_ROOT]: restart (into MOUNT_ROOT, else over the origin's
# mount point) with ufiles report, and compare.
restart_and_compare() {
  local c=$1 tag=$2 root=${3:-} t0 t1 rc=0
  t0=$(now)
  # with a mount root: under it (which must exist); else over the origin in the host's mount
  # namespace (--host-mounts: what the checks below look at)
  local where=(--host-mounts)
  if [ -n "$root" ]; then mkdir -p "$root"; where=(--mount-root "$root"); fi
  "$SNAP" restart "$ID" --image-root "$IR" --snapshot "${where[@]}" --exec "$UF" report > "$W/$tag.out" 2> "$W/$tag.err" || rc=$?
  t1=$(now)
  TIMES+=("$c $tag $(secs "$t0" "$t1")s")
  sed 's/^/    /' "$W/$tag.out" "$W/$tag.err"
  if [ "$rc" != 0 ]; then
    fail "$c-$tag" "snapckpt restart exited $rc: $(tr '\n' ' ' < "$W/$tag.err")"
    return 1
  fi
  pass "$c-$tag"
  if [ -n "$(fd_lines "$W/$tag.out")" ] && diff <(fd_lines "$W/first") <(fd_lines "$W/$tag.out") > "$W/$tag.diff"; then
    pass "$c-$tag-fds-match"
  else
    fail "$c-$tag-fds-match" "FD lines differ from the first report: $(tr '\n' ' ' < "$W/$tag.diff")"
  fi
  local base=$root/mnt/data
  check "$c-$tag-mounted" "$base is not a mount point" mountpoint -q "$base"
  check "$c-$tag-old-content" "the clone's d/b is '$(cat "$base/d/b" 2>&1)', want 'hello' (live changes leaked)" \
    test "$(cat "$base/d/b" 2>/dev/null)" = hello
  check "$c-$tag-no-live-files" "the clone has d/after-take, made on the live fs after the take" test ! -e "$base/d/after-take"
  check "$c-$tag-names-unlinked" "relinked names left in the clone: $(ls "$base/lost+found/checkpoint" 2>&1 | tr '\n' ' ')" \
    test -z "$(ls -A "$base/lost+found/checkpoint" 2>/dev/null)"
}

# run_case FS KIND: the whole scenario on one filesystem type and LV kind.
run_case() {
  local fs=$1 kind=$2 c="$2-$1" lv="data_$2_$1" pid t0 t1 rc
  log "case $c"
  scrub
  if [ "$kind" = thin ]; then
    lvcreate -q -y -V 1G -T "$VG/pool" -n "$lv" > /dev/null 2>&1
  else
    lvcreate -q -y -L 1G -n "$lv" "$VG" > /dev/null 2>&1
  fi || { fail "$c-setup" "lvcreate $lv failed"; return; }
  if [ "$fs" = xfs ]; then mkfs.xfs -q -f "/dev/$VG/$lv"; else mkfs.ext4 -q -F "/dev/$VG/$lv"; fi > /dev/null 2>&1 \
    && mount "/dev/$VG/$lv" /mnt/data && mkdir -p /mnt/data/d \
    || { fail "$c-setup" "mkfs/mount of $lv failed"; return; }

  # the workload
  rm -f "$W"/*
  "$UF" setup /mnt/data/d ab orphan:10485760 twofds tmpfile > "$W/ufiles.out" 2>&1 &
  pid=$!
  if ! wait_lines '^ready' 1 60 "$W/ufiles.out"; then
    fail "$c-workload" "ufiles did not get ready: $(tr '\n' ' ' < "$W/ufiles.out")"
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return
  fi
  sed -n '1,/^ready/p' "$W/ufiles.out" | grep '^FD ' > "$W/first"
  [ "$(wc -l < "$W/first")" -ge 5 ] || { fail "$c-workload" "first report has $(wc -l < "$W/first") FD lines, want 5"; }

  # the job
  {
    echo 'name = "lvm-test"'
    echo '[[filesystem]]'
    echo 'mount = "/mnt/data"'
    echo 'snapshot = "lvm"'
  } > "$W/job.toml"
  if [ "$kind" = classic ]; then
    # without lvm_size: refused, and the take is undone (workload thawed, names removed)
    rc=0
    "$SNAP" take --pid "$pid" --engine none --image-root "$IR" --job "$W/job.toml" > "$W/take0.out" 2> "$W/take0.err" || rc=$?
    check "$c-needs-lvm-size" "take without lvm_size: exit $rc, stderr: $(tr '\n' ' ' < "$W/take0.err")" \
      grep -q 'classic (non-thin) LV needs lvm_size in the job' "$W/take0.err"
    check "$c-failed-take-undone" "after the refused take: workload state $(awk '/^State/{print $2}' /proc/$pid/status 2>/dev/null), checkpoint dir: $(ls -A /mnt/data/lost+found/checkpoint 2>&1 | tr '\n' ' '), snapckpt LVs: $(snapckpt_lvs | tr '\n' ' ')" \
      bash -c "grep -q '^State:.*S (sleeping)' /proc/$pid/status && [ -z \"\$(ls -A /mnt/data/lost+found/checkpoint 2>/dev/null)\" ] && [ -z \"$(snapckpt_lvs)\" ]"
    echo 'lvm_size = "256M"' >> "$W/job.toml"
  fi

  t0=$(now)
  rc=0
  "$SNAP" take --pid "$pid" --engine none --image-root "$IR" --job "$W/job.toml" > "$W/take.out" 2> "$W/take.err" || rc=$?
  t1=$(now)
  TIMES+=("$c take $(secs "$t0" "$t1")s")
  sed 's/^/    /' "$W/take.out" "$W/take.err"
  ID=$(awk '/^checkpoint /{print $2; exit}' "$W/take.out")
  if [ "$rc" != 0 ] || [ -z "$ID" ]; then
    fail "$c-take" "snapckpt take exited $rc: $(tr '\n' ' ' < "$W/take.err")"
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return
  fi
  pass "$c-take"
  TIMES+=("$c take-record $(grep -o 'frozen .*' "$W/take.out")")
  local slv="snapckpt-$ID"
  check "$c-take-output" "take output does not name snapshot lvm $kind $VG/$slv" grep -qF "snapshot: lvm $kind $VG/$slv" "$W/take.out"

  # the snapshot LV
  local attr tags origin
  attr=$(lvfield "$slv" lv_attr); tags=$(lvfield "$slv" lv_tags); origin=$(lvfield "$slv" origin)
  lvs -a -o lv_name,lv_attr,origin,pool_lv,lv_size,lv_tags "$VG" | sed 's/^/    /'
  check "$c-snapshot-lv" "LV $VG/$slv: attr '$attr', origin '$origin', tags '$tags'" \
    test -n "$attr" -a "$origin" = "$lv" -a "$tags" = "snapckpt,snapckpt_id_$ID"
  if [ "$kind" = thin ]; then
    check "$c-snapshot-readonly-inactive" "thin snapshot lv_attr '$attr', want V r ... not active, skip flag" \
      bash -c "[[ '$attr' == Vri---tz-k ]]"
  else
    check "$c-snapshot-classic" "classic snapshot lv_attr '$attr', want s w i - a" bash -c "[[ '$attr' == swi-a-s--- ]]"
  fi
  "$SNAP" inspect "$ID" --image-root "$IR" --json > "$W/list.out" 2>&1
  check "$c-list" "snapckpt inspect: $(tr '\n' ' ' < "$W/list.out")" grep -qF "lvm $kind $VG/$slv" "$W/list.out"
  check "$c-live-names-removed" "relinked names left on the live fs: $(ls -A /mnt/data/lost+found/checkpoint 2>&1 | tr '\n' ' ')" \
    test -z "$(ls -A /mnt/data/lost+found/checkpoint 2>/dev/null)"

  # the workload went on unharmed
  kill -USR1 "$pid"
  if wait_lines '^checked' 1 30 "$W/ufiles.out"; then
    sed -n '/^ready/,/^checked/p' "$W/ufiles.out" | grep '^FD ' > "$W/second"
    if diff "$W/first" "$W/second" > "$W/second.diff"; then pass "$c-workload-unharmed"; else fail "$c-workload-unharmed" "$(tr '\n' ' ' < "$W/second.diff")"; fi
  else
    fail "$c-workload-unharmed" "no 'checked' after SIGUSR1: $(tail -n 3 "$W/ufiles.out" | tr '\n' ' ')"
  fi

  # change the live filesystem, then the workload goes away
  printf XXXXX > /mnt/data/d/b
  rm -f /mnt/data/d/a
  echo new > /mnt/data/d/after-take
  sync
  kill -9 "$pid"; wait "$pid" 2>/dev/null

  # a restart that fails after mounting (no such task for --exec) leaves nothing behind
  rc=0
  mkdir -p /mnt/r0
  "$SNAP" restart "$ID" --image-root "$IR" --snapshot --mount-root /mnt/r0 --exec-task 99999 --exec "$UF" report > "$W/restart0.out" 2> "$W/restart0.err" || rc=$?
  sed 's/^/    /' "$W/restart0.err"
  check "$c-failed-restart-undone" "exit $rc, $(tr '\n' ' ' < "$W/restart0.err"); snapckpt LVs: $(snapckpt_lvs | tr '\n' ' '); tags: $(lvfield "$slv" lv_tags)" \
    bash -c "[ $rc != 0 ] && grep -q 'no task 99999' '$W/restart0.err' && ! mountpoint -q /mnt/r0/mnt/data && [ '$(snapckpt_lvs | tr '\n' ' ')' = '$slv ' ] && [ '$(lvfield "$slv" lv_tags)' = 'snapckpt,snapckpt_id_$ID' ]"

  restart_and_compare "$c" restart1 /mnt/r1
  if [ "$kind" = thin ]; then
    restart_and_compare "$c" restart2 /mnt/r2
    check "$c-live-changed" "the live d/b is '$(cat /mnt/data/d/b 2>&1)', want XXXXX" test "$(cat /mnt/data/d/b)" = XXXXX
    # in place: over the (still mounted) origin
    restart_and_compare "$c" restart3-in-place
    check "$c-in-place-over-origin" "/mnt/data shows $(findmnt -n -o SOURCE /mnt/data), want the r3 clone" \
      bash -c "findmnt -n -o SOURCE /mnt/data | grep -q -- '--r3\$'"
    "$SNAP" list --image-root "$IR" > "$W/list2.out" 2>&1
    check "$c-list-clones" "snapckpt list after three restarts: $(tr '\n' ' ' < "$W/list2.out")" grep -qE "$ID .*mounted" "$W/list2.out"
    check "$c-clone-lvs" "restart clones: $(snapckpt_lvs | tr '\n' ' ')" \
      test "$(snapckpt_lvs | sort | tr '\n' ' ')" = "$slv $slv-r1 $slv-r2 $slv-r3 "
  else
    rc=0
    mkdir -p /mnt/r2
    "$SNAP" restart "$ID" --image-root "$IR" --snapshot --mount-root /mnt/r2 --exec "$UF" report > "$W/restart2.out" 2> "$W/restart2.err" || rc=$?
    sed 's/^/    /' "$W/restart2.err"
    check "$c-second-restart-refused" "second restart of a classic snapshot: exit $rc, stderr: $(tr '\n' ' ' < "$W/restart2.err")" \
      bash -c "[ $rc != 0 ] && grep -q 'restarted only once' '$W/restart2.err' && ! mountpoint -q /mnt/r2/mnt/data"
    "$SNAP" list --image-root "$IR" > "$W/list2.out" 2>&1
    check "$c-list-clones" "snapckpt list after the restart: $(tr '\n' ' ' < "$W/list2.out")" grep -qE "$ID .*mounted" "$W/list2.out"
    check "$c-live-changed" "the live d/b is '$(cat /mnt/data/d/b 2>&1)', want XXXXX" test "$(cat /mnt/data/d/b)" = XXXXX
  fi

  # delete: refused while mounted; then thin: --force (lazy unmounts), classic: unmount by
  # hand and delete without --force
  rc=0
  "$SNAP" delete "$ID" --image-root "$IR" > "$W/del0.out" 2> "$W/del0.err" || rc=$?
  check "$c-delete-refused-in-use" "delete without --force while mounted: exit $rc, $(tr '\n' ' ' < "$W/del0.err")" \
    bash -c "[ $rc != 0 ] && grep -q 'in use' '$W/del0.err' && [ -d '$IR/$ID' ]"
  local force=--force
  if [ "$kind" = classic ]; then
    umount /mnt/r1/mnt/data
    force=
  fi
  t0=$(now)
  rc=0
  "$SNAP" delete "$ID" --image-root "$IR" $force > "$W/del.out" 2> "$W/del.err" || rc=$?
  t1=$(now)
  TIMES+=("$c delete${force:+ --force} $(secs "$t0" "$t1")s")
  check "$c-delete" "delete $force: exit $rc, $(tr '\n' ' ' < "$W/del.err")" test "$rc" = 0
  check "$c-no-snapckpt-lvs" "snapckpt LVs left: $(snapckpt_lvs | tr '\n' ' ')" test -z "$(snapckpt_lvs)"
  check "$c-clones-unmounted" "still mounted: $(awk '$2 ~ "^/mnt/r" {print $2}' /proc/self/mounts | tr '\n' ' ')" \
    test -z "$(awk '$2 ~ "^/mnt/r" {print $2}' /proc/self/mounts)"
  check "$c-image-gone" "$IR/$ID still exists" test ! -e "$IR/$ID"
  check "$c-origin-visible-again" "/mnt/data shows $(findmnt -n -o SOURCE /mnt/data), want $VG-$lv" \
    bash -c "findmnt -n -o SOURCE /mnt/data | grep -q -- '-$lv\$'"

  # the origin is untouched and can go
  umount /mnt/data && lvremove -q -y "$VG/$lv" > /dev/null
  check "$c-cleanup" "could not unmount/remove the origin $lv" test $? = 0
}

# run_criu_case FS: the CRIU engine over a thin LV (the guest's own criu 3.17, which works on
# its 6.1 kernel): take (the task is killed after the image is published), restart twice from
# the snapshot side by side, each restored task reports the fds it had, delete.
run_criu_case() {
  local fs=$1 c="criu-thin-$1" lv="data_criu_$1" pid rc size n
  log "case $c"
  scrub
  lvcreate -q -y -V 1G -T "$VG/pool" -n "$lv" > /dev/null 2>&1 || { fail "$c-setup" "lvcreate $lv failed"; return; }
  if [ "$fs" = xfs ]; then mkfs.xfs -q -f "/dev/$VG/$lv"; else mkfs.ext4 -q -F "/dev/$VG/$lv"; fi > /dev/null 2>&1 \
    && mount "/dev/$VG/$lv" /mnt/data && mkdir -p /mnt/data/d \
    || { fail "$c-setup" "mkfs/mount of $lv failed"; return; }
  rm -f "$W"/*
  # a session leader (CRIU needs one), stdout on the guest's tmpfs (outside the snapshot)
  setsid "$UF" setup /mnt/data/d ab orphan:10485760 twofds tmpfile < /dev/null > "$W/ufiles.out" 2>&1 &
  if ! wait_lines '^ready' 1 60 "$W/ufiles.out"; then
    fail "$c-workload" "ufiles did not get ready: $(tr '\n' ' ' < "$W/ufiles.out")"; return
  fi
  pid=$(pgrep -n -x ufiles)
  sed -n '1,/^ready/p' "$W/ufiles.out" | grep '^FD ' > "$W/first"
  printf '[[filesystem]]\nmount = "/mnt/data"\nsnapshot = "lvm"\n[criu]\nengine = "criu"\npath = "/usr/sbin/criu"\n' > "$W/job.toml"
  rc=0
  "$SNAP" take --pid "$pid" --image-root "$IR" --job "$W/job.toml" > "$W/take.out" 2> "$W/take.err" || rc=$?
  sed 's/^/    /' "$W/take.out" "$W/take.err"
  ID=$(awk '/^checkpoint /{print $2; exit}' "$W/take.out")
  if [ "$rc" != 0 ] || [ -z "$ID" ]; then
    fail "$c-take" "snapckpt take exited $rc: $(tr '\n' ' ' < "$W/take.err")"; kill -9 "$pid" 2>/dev/null; return
  fi
  pass "$c-take"
  check "$c-task-killed" "pid $pid still alive after the take" bash -c "! kill -0 $pid 2>/dev/null"
  check "$c-image-small" "image $(du -sb "$IR/$ID" | cut -f1) bytes for a 10 MiB orphan" test "$(du -sb "$IR/$ID" | cut -f1)" -lt 1048576
  size=$(stat -c %s "$W/ufiles.out")
  printf XXXXX > /mnt/data/d/b; rm -f /mnt/data/d/a; sync
  for n in 1 2; do
    # CRIU checks the size of the files it reopens: the log back to its size at the take
    truncate -s "$size" "$W/ufiles.out"
    rc=0
    mkdir -p "/mnt/r$n"
    "$SNAP" restart "$ID" --image-root "$IR" --snapshot --mount-root "/mnt/r$n" > "$W/restart$n.out" 2> "$W/restart$n.err" || rc=$?
    sed 's/^/    /' "$W/restart$n.out" "$W/restart$n.err"
    if [ "$rc" != 0 ]; then
      fail "$c-restart$n" "exit $rc: $(tr '\n' ' ' < "$W/restart$n.err")"; continue
    fi
    pass "$c-restart$n"
    # back in pause(): then it takes the signal and reports
    for _ in $(seq 100); do [ "$(cat /proc/$pid/wchan 2>/dev/null)" != "" ] && grep -q 'S (sleeping)' /proc/$pid/status 2>/dev/null && break; sleep 0.05; done
    kill -USR1 "$pid" 2>/dev/null
    if wait_lines '^checked' 1 30 "$W/ufiles.out"; then
      sed -n '/^ready/,/^checked/p' "$W/ufiles.out" | grep '^FD ' > "$W/after$n"
      if diff "$W/first" "$W/after$n" > "$W/after$n.diff"; then pass "$c-restart$n-fds-match"; else fail "$c-restart$n-fds-match" "$(tr '\n' ' ' < "$W/after$n.diff")"; fi
    else
      fail "$c-restart$n-fds-match" "the restored task did not report: $(tail -n 3 "$W/ufiles.out" | tr '\n' ' ')"
    fi
    check "$c-restart$n-old-content" "the clone's d/b is '$(cat /mnt/r$n/mnt/data/d/b 2>&1)', want hello" test "$(cat /mnt/r$n/mnt/data/d/b 2>/dev/null)" = hello
    kill -9 "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  rc=0
  "$SNAP" delete "$ID" --image-root "$IR" --force > "$W/del.out" 2> "$W/del.err" || rc=$?
  check "$c-delete" "delete --force: exit $rc, $(tr '\n' ' ' < "$W/del.err")" test "$rc" = 0
  check "$c-no-snapckpt-lvs" "snapckpt LVs left: $(snapckpt_lvs | tr '\n' ' ')" test -z "$(snapckpt_lvs)"
  umount /mnt/data && lvremove -q -y "$VG/$lv" > /dev/null
  check "$c-cleanup" "could not unmount/remove the origin $lv" test $? = 0
}

# jqr FILE FILTER: one value of a JSON file ("" when absent)
jqr() { jq -r "$2 // \"\"" "$1" 2>/dev/null; }
note() { echo "NOTE $*"; echo "NOTE $*" >> "$SUMMARY"; }

# run_predump_case: CRIU's pre-dump rounds before the freeze (take --pre-dump), over a thin
# LV with ext4, with a task holding 256 MiB of resident memory (PREDUMP_MIB on the host) and
# an unlinked file.
run_predump_case() {
  local c=predump-thin-ext4 lv=data_predump pid rc id0 rec first final rounds size hook
  log "case $c"
  scrub
  if /usr/sbin/criu check --feature mem_dirty_track > "$W/mdt" 2>&1; then
    pass "$c-kernel-tracks-memory"
  else
    fail "$c-kernel-tracks-memory" "criu check --feature mem_dirty_track: $(tr '\n' ' ' < "$W/mdt")"; return
  fi
  lvcreate -q -y -V 1G -T "$VG/pool" -n "$lv" > /dev/null 2>&1 && mkfs.ext4 -q -F "/dev/$VG/$lv" > /dev/null 2>&1 \
    && mount "/dev/$VG/$lv" /mnt/data && mkdir -p /mnt/data/d \
    || { fail "$c-setup" "lvcreate/mkfs/mount of $lv failed"; return; }
  rm -rf "${W:?}"/*
  local mib wait_s; mib=$(cat "$SHARE/predump_mib" 2>/dev/null || echo 256)
  wait_s=$(( mib > 256 ? 600 : 120 ))   # filling and hashing the memory, under emulation
  setsid "$MH" /mnt/data/d "$mib" "$W/mem.report" < /dev/null > "$W/mem.out" 2>&1 &
  if ! wait_lines '^ready' 1 "$wait_s" "$W/mem.out"; then
    fail "$c-workload" "memhold did not get ready: $(tr '\n' ' ' < "$W/mem.out")"; return
  fi
  pid=$(awk '/^ready/{print $2; exit}' "$W/mem.out")
  kill -USR1 "$pid"
  wait_lines '^checked' 1 "$wait_s" "$W/mem.report" || { fail "$c-workload" "no first self-check"; kill -9 "$pid"; return; }
  note "$c workload: $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ') $(cat "$W/mem.report")"
  printf '[[filesystem]]\nmount = "/mnt/data"\nsnapshot = "lvm"\n[criu]\nengine = "criu"\npath = "/usr/sbin/criu"\n' > "$W/job0.toml"

  # without pre-dump, tasks left running: the frozen window to compare with
  rc=0
  "$SNAP" take --pid "$pid" --leave-running --image-root "$IR" --job "$W/job0.toml" > "$W/take0.out" 2> "$W/take0.err" || rc=$?
  sed 's/^/    /' "$W/take0.out" "$W/take0.err"
  id0=$(awk '/^checkpoint /{print $2; exit}' "$W/take0.out")
  if [ "$rc" = 0 ] && [ -n "$id0" ]; then
    pass "$c-plain-take"
    rec=$IR/$id0/checkpoint.json
    note "$c without --pre-dump: frozen_ms $(jqr "$rec" .timings.frozen_ms) (snapshot_ms $(jqr "$rec" .timings.snapshot_ms)), CRIU frozen_time $(jqr "$rec" .timings.criu.frozen_time) us, memdump_time $(jqr "$rec" .timings.criu.memdump_time) us, memwrite_time $(jqr "$rec" .timings.criu.memwrite_time) us, pages_written $(jqr "$rec" .timings.criu.pages_written)"
    "$SNAP" delete "$id0" --image-root "$IR" --force > /dev/null 2> "$W/del0.err" \
      || fail "$c-plain-delete" "$(tr '\n' ' ' < "$W/del0.err")"
  else
    fail "$c-plain-take" "exit $rc: $(tr '\n' ' ' < "$W/take0.err")"
  fi

  # with pre-dump (the job's key), the task killed; its memory dirtied (1/16 of its pages)
  # after the first round, while the take waits at its test hook
  cp "$W/job0.toml" "$W/job.toml"
  echo 'pre_dump = true' >> "$W/job.toml"
  hook=$W/hooks; mkdir -p "$hook"; touch "$hook/take-pre-dumped.wait"
  rc=0
  SNAPCKPT_HOOK_DIR=$hook "$SNAP" take --pid "$pid" --image-root "$IR" --job "$W/job.toml" > "$W/take.out" 2> "$W/take.err" &
  local tpid=$!
  for _ in $(seq 1200); do [ -e "$hook/take-pre-dumped.reached" ] && break; kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
  if [ -e "$hook/take-pre-dumped.reached" ]; then
    rm -f "$W/mem.report"
    kill -USR2 "$pid"
    wait_lines '^dirtied' 1 "$wait_s" "$W/mem.report" || fail "$c-dirty" "memhold did not dirty its memory"
  fi
  rm -f "$hook/take-pre-dumped.wait"
  wait "$tpid" || rc=$?
  sed 's/^/    /' "$W/take.out" "$W/take.err"
  ID=$(awk '/^checkpoint /{print $2; exit}' "$W/take.out")
  if [ "$rc" != 0 ] || [ -z "$ID" ]; then
    fail "$c-take" "snapckpt take --pre-dump exited $rc: $(tr '\n' ' ' < "$W/take.err")"; kill -9 "$pid" 2>/dev/null; return
  fi
  pass "$c-take"
  rec=$IR/$ID/checkpoint.json
  rounds=$(jqr "$rec" '.timings.pre_dump | length')
  first=$(jqr "$rec" '.timings.pre_dump[0].stats.pages_written')
  final=$(jqr "$rec" .timings.criu.pages_written)
  note "$c with --pre-dump: $rounds round(s), pages_written $(jq -r '[.timings.pre_dump[] | "\(.dir)=\(.stats.pages_written) in \(.duration_us / 1000 | floor) ms"] | join(", ")' "$rec"); final dump: frozen_ms $(jqr "$rec" .timings.frozen_ms) (snapshot_ms $(jqr "$rec" .timings.snapshot_ms)), CRIU frozen_time $(jqr "$rec" .timings.criu.frozen_time) us, memdump_time $(jqr "$rec" .timings.criu.memdump_time) us, memwrite_time $(jqr "$rec" .timings.criu.memwrite_time) us, pages_written $final, pages_skipped_parent $(jqr "$rec" .timings.criu.pages_skipped_parent)"
  check "$c-rounds-reported" "take output: $(tr '\n' ' ' < "$W/take.out")" grep -qE 'pre-dump before the freeze: [0-9]+ round' "$W/take.out"
  check "$c-rounds" "$rounds pre-dump rounds, want 2 or more (1/16 of the memory dirtied after the first)" test "${rounds:-0}" -ge 2
  check "$c-first-round-large" "first round wrote $first pages, want >= 60000 (256 MiB)" test "${first:-0}" -ge 60000
  check "$c-final-small" "final dump wrote $final pages, first round $first: want under a tenth" \
    test -n "$final" -a "$((${final:-0} * 10))" -lt "${first:-0}"
  check "$c-parent-chain" "image dir: $(ls -l "$IR/$ID" | tr '\n' ' ')" \
    bash -c "[ -d '$IR/$ID/pre-1' ] && [ \"\$(readlink '$IR/$ID/parent')\" = pre-$rounds ] && [ \"\$(readlink '$IR/$ID/pre-2/parent')\" = ../pre-1 ]"
  check "$c-task-killed" "pid $pid still alive after the take" bash -c "! kill -0 $pid 2>/dev/null"

  # export is refused (the stream does not carry the rounds)
  rc=0
  "$SNAP" export "$ID" --image-root "$IR" --image-only -o "$W/x.stream" > /dev/null 2> "$W/export.err" || rc=$?
  check "$c-export-refused" "export: exit $rc, $(tr '\n' ' ' < "$W/export.err")" \
    bash -c "[ $rc != 0 ] && grep -q 'taken with --pre-dump' '$W/export.err' && [ ! -e '$W/x.stream' ]"

  # restart from the snapshot: the restored task checks its memory and its unlinked file
  rm -f "$W/mem.report"
  mkdir -p /mnt/r1
  rc=0
  "$SNAP" restart "$ID" --image-root "$IR" --snapshot --mount-root /mnt/r1 > "$W/restart.out" 2> "$W/restart.err" || rc=$?
  sed 's/^/    /' "$W/restart.out" "$W/restart.err"
  if [ "$rc" != 0 ]; then
    fail "$c-restart" "exit $rc: $(tr '\n' ' ' < "$W/restart.err")"
  else
    pass "$c-restart"
    for _ in $(seq 100); do grep -q 'S (sleeping)' /proc/$pid/status 2>/dev/null && break; sleep 0.05; done
    kill -USR1 "$pid" 2>/dev/null
    if wait_lines '^checked' 1 120 "$W/mem.report"; then
      note "$c restored: $(cat "$W/mem.report")"
      check "$c-restored-memory" "the restored task says: $(cat "$W/mem.report")" grep -q 'mem=ok' "$W/mem.report"
      check "$c-restored-file" "the restored task says: $(cat "$W/mem.report")" grep -q 'file=ok nlink=0' "$W/mem.report"
    else
      fail "$c-restored-memory" "the restored task did not report (alive: $(kill -0 "$pid" 2>/dev/null && echo yes || echo no))"
    fi
    kill -9 "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rc=0
  "$SNAP" delete "$ID" --image-root "$IR" --force > "$W/del.out" 2> "$W/del.err" || rc=$?
  check "$c-delete" "delete --force: exit $rc, $(tr '\n' ' ' < "$W/del.err")" test "$rc" = 0
  check "$c-image-gone" "$IR/$ID still exists" test ! -e "$IR/$ID"
  check "$c-no-snapckpt-lvs" "snapckpt LVs left: $(snapckpt_lvs | tr '\n' ' ')" test -z "$(snapckpt_lvs)"
  umount /mnt/data && lvremove -q -y "$VG/$lv" > /dev/null
  check "$c-cleanup" "could not unmount/remove the origin $lv" test $? = 0
}

T0=$(now)
if [ "$(cat "$SHARE/only" 2>/dev/null)" != predump ]; then
  for k in thin classic; do
    for fs in ext4 xfs; do
      run_case "$fs" "$k"
    done
  done
  for fs in ext4 xfs; do
    run_criu_case "$fs"
  done
fi
run_predump_case
scrub
log "timings"
for t in "${TIMES[@]}"; do echo "TIME $t" | tee -a "$SUMMARY"; done
echo "TIME all cases $(secs "$T0" "$(now)")s" | tee -a "$SUMMARY"
finish
