#!/usr/bin/env bash
# Run every benchmark and write bench/results.md (raw CSV/JSON in bench/results/), then put
# the tables into bench/README.md between the results markers.
#
#   bench/run-all.sh [--xfs]      --xfs: take-vs-criu also on xfs (about twice as long)
#
# Builds snapckpt once (cargo build --release) and runs every script with that binary. The
# environment variables of each script pass through (SIZES, REPS, ...). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run-all: run as root" >&2; exit 1; }
. bench/lib.sh
XFS=()
for a in "$@"; do
  case $a in
    --xfs) XFS=(--xfs) ;;
    *) echo "usage: $0 [--xfs]" >&2; exit 2 ;;
  esac
done

mkdir -p "$RESULTS_DIR"
if [ -z "${SNAPCKPT_BIN:-}" ]; then
  cargo build --release --quiet
  BINCOPY=$(mktemp /var/tmp/snapckpt-bench-bin.XXXXXX)
  trap 'rm -f "$BINCOPY"' EXIT
  cp target/release/snapckpt "$BINCOPY"
  chmod 755 "$BINCOPY"
  export SNAPCKPT_BIN=$BINCOPY
fi
command -v hyperfine >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q hyperfine >/dev/null 2>&1 || true

MACHINE=$(machine_line)
declare -A STATUS
run() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "=== $name $*" >&2
  if bash "bench/$name.sh" "$@" > "$RESULTS_DIR/$name.log" 2>&1; then
    STATUS[$name]="ok ($(( $(date +%s) - t0 )) s)"
  else
    STATUS[$name]="FAILED (exit $?, see bench/results/$name.log)"
    tail -5 "$RESULTS_DIR/$name.log" >&2
  fi
  echo "=== $name: ${STATUS[$name]}" >&2
}
run take-vs-criu "${XFS[@]}"
run dirty-take
run frozen-many
run relink-floor
run scan-vs-lsof
run copy-fallback
run export

section() {  # name title
  echo "### $2"
  echo
  echo "\`bench/$1.sh\`: ${STATUS[$1]}"
  echo
  if [ -s "$RESULTS_DIR/$1.md" ] && [[ ${STATUS[$1]} == ok* ]]; then cat "$RESULTS_DIR/$1.md"; else echo "(no results)"; fi
  echo
}
{
  echo "## Results"
  echo
  echo "Measured $MACHINE. Loop-mounted filesystems on an image file on the VM's disk; warm page cache (never dropped, \`sync\` before each timed step)."
  echo
  section take-vs-criu "snapckpt take/restart vs plain CRIU, one unlinked orphan of N bytes"
  section dirty-take "Dirty vs synced page cache: the frozen window, beside plain and durable CRIU"
  section frozen-many "Frozen time: 100 processes, 1,000 unlinked files, cgroup v2, btrfs"
  section relink-floor "The filesystem's floor under the frozen work of frozen-many (no snapckpt)"
  section scan-vs-lsof "scan vs lsof +L1 (the same 100 processes)"
  section copy-fallback "Copy fallback on ext4 (no reflink): 1 GiB orphans"
  section export "export (migration stream) vs criu dump with ghost files and tar"
} > bench/results.md

python3 - bench/README.md bench/results.md <<'EOF'
import sys
readme, res = sys.argv[1], open(sys.argv[2]).read()
s = open(readme).read()
b, e = "<!-- results:begin -->", "<!-- results:end -->"
if b in s and e in s:
    s = s[:s.index(b) + len(b)] + "\n" + res + s[s.index(e):]
    open(readme, "w").write(s)
EOF
echo "wrote bench/results.md and the results section of bench/README.md" >&2
for k in take-vs-criu dirty-take frozen-many scan-vs-lsof copy-fallback export; do echo "$k: ${STATUS[$k]}" >&2; done
