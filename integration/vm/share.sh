# Sourced by the guest test drivers (lvm-tests.sh, migrate-tests.sh, kmod-tests.sh): the parts
# they share. Each driver sets NAME (its log prefix) and REPO, HERE before sourcing this.

log() { echo "[$NAME] $*" >&2; }

# make_share KEEP: a temporary share directory in SHARE, removed at exit unless KEEP is 1
# (then kept with the guest's console.log and summary, for debugging). Starts the clock T0.
make_share() {
  SHARE=$(mktemp -d "${TMPDIR:-/tmp}/snapckpt-$NAME.XXXXXX")
  if [ "$1" = 1 ]; then
    trap 'log "kept $SHARE (console.log, summary)"' EXIT
  else
    trap 'rm -rf "$SHARE"' EXIT
  fi
  T0=$(date +%s.%N)
}

# share_snapckpt: snapckpt (cargo build --release) and the static test workload ufiles
# (integration/progs/ufiles.c), executable, in SHARE.
share_snapckpt() {
  local target
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --quiet --bin snapckpt) >&2
  target=${CARGO_TARGET_DIR:-$REPO/target}
  case "$target" in /*) ;; *) target=$REPO/$target ;; esac
  cp "$target/release/snapckpt" "$SHARE/snapckpt"
  log "cc -static ufiles.c"
  cc -static -O1 -o "$SHARE/ufiles" "$REPO/integration/progs/ufiles.c"
  chmod +x "$SHARE/snapckpt" "$SHARE/ufiles"
}

# boot_and_report TIMEOUT: boot the guest once on SHARE (run.sh runs its test.sh), print the
# guest's PASS/FAIL/TIME/NOTE lines, the build and guest times, and a last line
# `N passed, M failed`; returns non-zero if anything failed or the guest did not finish.
boot_and_report() {
  local rc=0 t1 t2 passed=0 failed=0
  t1=$(date +%s.%N)
  VM_QUIET=${VM_QUIET:-1} "$HERE/run.sh" "$SHARE" "$1" < /dev/null || rc=$?
  t2=$(date +%s.%N)
  if [ -f "$SHARE/summary" ]; then
    echo "=== guest summary"
    grep -E '^(PASS|FAIL|TIME|NOTE) ' "$SHARE/summary" || true
    passed=$(grep -c '^PASS ' "$SHARE/summary" || true)
    failed=$(grep -c '^FAIL ' "$SHARE/summary" || true)
  fi
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
    echo "FAIL guest: run.sh exited $rc (the guest test did not finish)"
    failed=$((failed + 1))
  fi
  awk -v a="$T0" -v b="$t1" -v c="$t2" -v n="$NAME" 'BEGIN{printf "[%s] build %.1fs, guest %.1fs\n", n, b - a, c - b}' >&2
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ] && [ "$rc" = 0 ]
}
