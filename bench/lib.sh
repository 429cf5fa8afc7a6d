# Shared helpers for the bench/ scripts (sourced, not run). Each script calls bench_init NAME.
#
# Environment (all optional):
#   SNAPCKPT_BIN   snapckpt binary to use (default: `cargo build --release`, then a private copy
#                  of target/release/snapckpt, so a rebuild during a run changes nothing)
#   CRIU           CRIU binary (default /opt/snapckpt/criu/bin/criu)
#   BENCH_WORK     scratch directory (default /var/tmp/snapckpt-bench); loop images go there
#   RESULTS_DIR    where raw results and markdown fragments go (default bench/results)
#   KEEP=1         keep the scratch directory (mounts, loops and processes are still cleaned)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
CRIU=${CRIU:-/opt/snapckpt/criu/bin/criu}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}

_PIDS=()      # workloads we started (killed by pid at exit)
_LOOPS=()     # loop devices we attached
_CGROUPS=()   # cgroups we made
_CKPTS=()     # "image_root id" pairs to delete at exit

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bench_init() {
  BENCH_NAME=$1
  [ "$(id -u)" = 0 ] || { echo "$BENCH_NAME: run as root" >&2; exit 1; }
  W=${BENCH_WORK:-/var/tmp/snapckpt-bench}/$BENCH_NAME-$$
  mkdir -p "$W" "$RESULTS_DIR"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  if [ -n "${SNAPCKPT_BIN:-}" ]; then
    BIN=$SNAPCKPT_BIN
  else
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
    cp "$REPO/target/release/snapckpt" "$W/snapckpt"
    BIN=$W/snapckpt
  fi
  [ -x "$BIN" ] || die "no snapckpt binary at $BIN"
  [ -x "$CRIU" ] || die "no CRIU at $CRIU (scripts/install-criu.sh)"
  mkdir -p "$W/progs" "$W/cwd"   # workloads run in $W/cwd, where nothing else is made
}

# Build a C program into $W/progs; prints its path.
build_prog() {
  local src=$1 out
  out=$W/progs/$(basename "$src" .c)
  [ -x "$out" ] || cc -O2 -Wall -o "$out" "$src" || die "cc $src failed"
  echo "$out"
}

bench_cleanup() {
  local rc=$? p m c l
  set +e
  trap - EXIT INT TERM
  for c in "${_CGROUPS[@]}"; do
    [ -e "$c/cgroup.kill" ] && echo 1 > "$c/cgroup.kill" 2>/dev/null
    [ -e "$c/cgroup.freeze" ] && echo 0 > "$c/cgroup.freeze" 2>/dev/null
  done
  for p in "${_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${_PIDS[@]}"; do wait_gone "$p" 2>/dev/null; done
  for c in "${_CKPTS[@]}"; do
    # shellcheck disable=SC2086
    set -- $c
    [ -e "$1/$2" ] && "$BIN" delete "$2" --force --image-root "$1" >/dev/null 2>&1
  done
  for m in $(mounts_under "$W"); do umount "$m" 2>/dev/null || umount -l "$m"; done
  for l in "${_LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  for c in "${_CGROUPS[@]}"; do rmdir "$c" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
  exit $rc
}

# Mount points under a directory, deepest first.
mounts_under() {
  awk -v d="$1" '{ if ($5 == d || index($5, d "/") == 1) print $5 }' /proc/self/mountinfo | sort -r
}

# mkfs_loop TYPE SIZE MOUNTPOINT: a loop-mounted filesystem on a sparse image file in $W.
mkfs_loop() {
  local type=$1 size=$2 mnt=$3 img loop
  img=$W/$(basename "$mnt").$type.img
  rm -f "$img"; truncate -s "$size" "$img"
  case $type in
    btrfs) mkfs.btrfs -q -f "$img" >/dev/null ;;
    xfs) mkfs.xfs -q -f "$img" ;;
    ext4) mkfs.ext4 -q -F "$img" ;;
    *) die "unknown fs $type" ;;
  esac
  loop=$(losetup --find --show "$img")
  _LOOPS+=("$loop")
  mkdir -p "$mnt"
  mount "$loop" "$mnt"
}

# start_workload LOG CMD...: start CMD as a session leader with stdin /dev/null, stdout and
# stderr to LOG, none of our other fds; wait for its "ready pid=N" line; sets WPID=N.
# (Not in $(...): the pid must reach the cleanup list of this shell.)
# With WORKLOAD_CGROUP=DIR set, CMD starts inside that cgroup (v2).
start_workload() {
  local logf=$1 pid i; shift
  rm -f "$logf"
  (
    cd "$W/cwd"
    [ -n "${WORKLOAD_CGROUP:-}" ] && echo "$BASHPID" > "$WORKLOAD_CGROUP/cgroup.procs"
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid "$@" </dev/null >"$logf" 2>&1
  ) &
  disown $!   # no "Killed" notices from bash when it dies
  for i in $(seq 6000); do
    pid=$(sed -n 's/^ready pid=\([0-9]*\).*/\1/p' "$logf" 2>/dev/null) || true
    [ -n "$pid" ] && break
    grep -q -v -e '^ready' -e '^FD' -e '^MAP' -e '^CWD' "$logf" 2>/dev/null && { cat "$logf" >&2; die "workload failed: $*"; }
    sleep 0.05
  done
  [ -n "$pid" ] || die "workload not ready after 300 s: $*"
  _PIDS+=("$pid")
  WPID=$pid
}

# make_cgroup: a v2 cgroup for the workload; sets CG to its path.
make_cgroup() {
  CG=/sys/fs/cgroup/unified/snapckpt-bench-$$
  [ -e /sys/fs/cgroup/unified/cgroup.procs ] || CG=/sys/fs/cgroup/snapckpt-bench-$$
  mkdir -p "$CG"
  _CGROUPS+=("$CG")
}

# kill_cgroup CG: kill every task in it and wait until it is empty.
kill_cgroup() {
  local i
  echo 1 > "$1/cgroup.kill"
  for i in $(seq 1200); do [ -z "$(cat "$1/cgroup.procs")" ] && return 0; sleep 0.05; done
  log "cgroup $1 not empty: $(cat "$1/cgroup.procs" | tr '\n' ' ')"
  return 1
}

# kill_session SID: kill every task of a session we started (by pid), wait until all are gone.
kill_session() {
  local p pids
  pids=$(ps -o pid= -s "$1" || true)
  for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
  for p in $pids; do wait_gone "$p" || true; done
}

# wait_gone PID: wait until /proc/PID vanishes (killed and reaped), up to 60 s.
wait_gone() {
  local i
  for i in $(seq 1200); do [ -e "/proc/$1" ] || return 0; sleep 0.05; done
  log "pid $1 still exists: $(grep State "/proc/$1/status" 2>/dev/null)"
  return 1
}
stop_pid() { kill -9 "$1" 2>/dev/null || true; wait_gone "$1"; }

now_ns() { date +%s%N; }
# ms_since T0_NS: milliseconds (3 decimals) since T0.
ms_since() { local t1; t1=$(now_ns); awk -v a="$1" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# timings_json DIR: the timings object of a checkpoint.json, as "k=v k=v ...".
ckpt_timings() {
  python3 - "$1/checkpoint.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["timings"]
print(" ".join(f"{k}={t[k]}" for k in ("freeze_ms", "scan_ms", "relink_ms", "snapshot_ms", "dump_ms", "frozen_ms")))
EOF
}

# criu_stats FILE: freezing/frozen/memdump/memwrite times (ms) from CRIU's stats-dump image
# (StatsEntry{dump=1: DumpStatsEntry{freezing_time=1, frozen_time=2, memdump_time=3,
# memwrite_time=4} in microseconds}), decoded without crit.
criu_stats() {
  python3 - "$1" <<'EOF'
import struct, sys
def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1; v |= (c & 0x7f) << s; s += 7
        if not c & 0x80: return v, i
def fields(b):
    i, out = 0, {}
    while i < len(b):
        k, i = varint(b, i); f, w = k >> 3, k & 7
        if w == 0: v, i = varint(b, i)
        elif w == 2: n, i = varint(b, i); v = b[i:i + n]; i += n
        elif w == 1: v = b[i:i + 8]; i += 8
        elif w == 5: v = b[i:i + 4]; i += 4
        else: break
        out[f] = v
    return out
try:
    b = open(sys.argv[1], "rb").read()
    n = struct.unpack("<I", b[8:12])[0]   # two magics, then the entry's length
    d = fields(fields(b[12:12 + n])[1])
    print(f"criu_freezing_ms={d[1]/1000:.1f} criu_frozen_ms={d[2]/1000:.1f} criu_memdump_ms={d[3]/1000:.1f} criu_memwrite_ms={d[4]/1000:.1f}")
except Exception as e:
    print("criu_freezing_ms= criu_frozen_ms= criu_memdump_ms= criu_memwrite_ms=")
EOF
}

# size_bytes "16M" -> 16777216 (K, M, G suffixes, powers of 2).
size_bytes() { numfmt --from=iec "$1"; }

# Machine line for result headers.
machine_line() {
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r), CRIU $("$CRIU" --version 2>/dev/null | awk '/Version/ {print $2}'), snapckpt $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD -- src 2>/dev/null || echo '+uncommitted src')"
}
