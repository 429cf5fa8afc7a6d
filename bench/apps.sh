#!/usr/bin/env bash
# Real applications, snapckpt beside plain CRIU in one run: a Python program with tempfile's
# unlinked files, a SQLite WAL database deleted while open, nginx with an upload in progress,
# MariaDB with a big query in flight and an open transaction (the workloads of
# integration/tests/apps.rs, integration/progs/*.py). For each, REPS times, each on a fresh
# instance: snapckpt `take --pid P --tree --engine criu --snapshot btrfs` / `restart ID
# --snapshot`, then plain `criu dump --file-locks --ghost-limit 16G` / `criu restore -d`;
# take/dump time, frozen time, image size, restart/restore time; every restore is checked.
#
#   bench/apps.sh
#
# Env: APPS="python sqlite nginx mariadb"  REPS=3  (and lib.sh's SNAPCKPT_BIN, CRIU, ...)
# Needs what scripts/setup.sh installs (mariadb-server, nginx, sqlite3, python3). An application
# that is not installed is left out (logged). Servers listen on 127.0.0.1 only.
# Output: $RESULTS_DIR/apps.csv (one row per measurement), apps.md (medians), log on stderr.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_init apps
APPS=${APPS:-"python sqlite nginx mariadb"}
have=()
for a in $APPS; do
  case $a in
    python|sqlite) need=(/usr/bin/python3) ;;
    nginx) need=(/usr/bin/python3 /usr/sbin/nginx) ;;
    mariadb) need=(/usr/bin/python3 /usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-install-db) ;;
    *) die "unknown application $a" ;;
  esac
  ok=1
  for n in "${need[@]}"; do [ -x "$n" ] || { log "left out $a: $n is not installed (scripts/setup.sh)"; ok=0; }; done
  [ $ok = 1 ] && have+=("$a")
done
[ ${#have[@]} -gt 0 ] || die "no application installed"

# The driver's trees (their roots are session leaders; apps.py lists each root's pid in
# $W/trees): each session whose leader is still one of ours (its command line names $W) is killed
# before lib.sh's cleanup, also when the driver died.
kill_trees() {
  local s
  [ -s "$W/trees" ] || return 0
  for s in $(sort -u "$W/trees"); do
    tr '\0' ' ' 2>/dev/null < "/proc/$s/cmdline" | grep -qF "$W/" && kill_session "$s"
  done
  return 0
}
apps_cleanup() {
  local rc=$?
  set +e
  kill_trees
  (exit $rc)   # bench_cleanup exits with the status it finds
  bench_cleanup
}
trap apps_cleanup EXIT

mkfs_loop btrfs 8G "$W/fs"
CSV=$RESULTS_DIR/apps.csv
# a failed measurement is logged, recorded in the CSV and the table, and makes the exit status 1
status=0
TREES_FILE=$W/trees BIN=$BIN CRIU=$CRIU APPS="${have[*]}" /usr/bin/python3 "$BENCH_DIR/apps.py" bench "$W/fs" "$W" "$CSV" || status=$?
{ echo "Measured $(machine_line)."; echo; /usr/bin/python3 "$BENCH_DIR/apps.py" summarize "$CSV"; } > "$RESULTS_DIR/apps.md"
cat "$RESULTS_DIR/apps.md"
exit $status
