# Sourced by kmod-guest/test.sh and kmod-guest/bench.sh: snapckpt itself over LVM with the
# snapckpt_relink module loaded (or not). Needs from the caller: SHARE, W, pass, fail, note,
# timed, now, secs, log. Uses /mnt/data (the origin) and /mnt/kchk (a check mount).
SNAP=$SHARE/snapckpt
UF=$SHARE/ufiles
IR=/var/lib/snapckpt/images
mkdir -p "$IR" /mnt/data /mnt/kchk

# wait_ready FILE SECONDS: until ufiles printed "ready" (or died)
wait_ready() {
  local f=$1 t=$2 i
  for ((i = 0; i < t * 10; i++)); do
    grep -q '^ready' "$f" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
fd_lines() { grep '^FD ' "$1" || true; }
# bytes of thin pool data in use (data_percent has 2 decimals: ~0.5 MiB of a 5.4 GiB pool)
pool_used() { lvs --noheadings --units b --nosuffix -o lv_size,data_percent "$1" | awk '{printf "%d\n", $1 * $2 / 100}'; }
df_used() { sync; df -B1 --output=used "$1" | tail -n1 | tr -d ' '; }
ckjson() { echo "$IR/$ID/checkpoint.json"; }
# snapckpt LVs (and our check LVs) of a VG
sc_lvs() { lvs --noheadings -o lv_name "$1" 2>/dev/null | awk '$1 ~ /^snapckpt-/ {print $1}'; }

# uf_start DIR SCENARIO...: start ufiles, wait for its first report; sets UFPID, UFOUT
uf_start() {
  local dir=$1; shift
  UFOUT=$W/uf.$RANDOM.out
  "$UF" setup "$dir" "$@" < /dev/null > "$UFOUT" 2>&1 &
  UFPID=$!
  if ! wait_ready "$UFOUT" 600; then
    UFPID_BAD=1
    kill -9 "$UFPID" 2>/dev/null; wait "$UFPID" 2>/dev/null
    return 1
  fi
  sed -n '1,/^ready/p' "$UFOUT" | grep '^FD ' > "$UFOUT.first"
}
uf_stop() { kill -9 "$UFPID" 2>/dev/null; wait "$UFPID" 2>/dev/null; }

# sc_job [LVM_SIZE]: a job naming /mnt/data with snapshot = "lvm" (a classic LV needs
# lvm_size); prints its path. (`take --snapshot lvm` alone would also try to snapshot the
# guest's / on vda, not an LV, and fail: its precheck accepts any filesystem.)
sc_job() {
  printf '[[filesystem]]\nmount = "/mnt/data"\nsnapshot = "lvm"\n%s' "${1:+lvm_size = \"$1\"
}" > "$W/job.toml"
  echo "$W/job.toml"
}
# sc_take TAG PID JOB: sync, then `snapckpt take --engine none --job JOB`, wall-timed; sets ID
# (empty on failure), TAKE_S, TAKE_RC; output in $W/TAG.take.{out,err}
sc_take() {
  local tag=$1 pid=$2 job=$3 t0 t1
  sync
  TAKE_RC=0
  t0=$(now)
  "$SNAP" take --pid "$pid" --engine none --image-root "$IR" --job "$job" > "$W/$tag.take.out" 2> "$W/$tag.take.err" || TAKE_RC=$?
  t1=$(now)
  TAKE_S=$(secs "$t0" "$t1")
  ID=$(awk '/^checkpoint /{print $2; exit}' "$W/$tag.take.out")
  [ "$TAKE_RC" = 0 ] && [ -n "$ID" ] && [ -f "$(ckjson)" ] || ID=
}
# the record's objects: index class ino size method relinked.ino bytes_copied rel_path
sc_objects() {
  jq -r '.objects[] | [.index, .class, .ino, .size, (.relinked.method // "-"), (.relinked.ino // 0), (.relinked.bytes_copied // 0), (.relinked.rel_path // "-")] | @tsv' "$(ckjson)"
}
# one timing field of the record, ms
sc_timing() { jq -r ".timings.$1 // \"\"" "$(ckjson)"; }
sc_delete() { "$SNAP" delete "$ID" --image-root "$IR" "$@" > "$W/del.out" 2> "$W/del.err"; }
