#!/bin/bash
# criu-image-proof.sh: with real CRIU, show that handing preserved files back to CRIU *by path*
# (a restore copy of the image directory whose files.img is rewritten by
# snapckpt::criu_image::rewrite_externals) restores what --inherit-fd cannot:
#   A. a workload holding O_NOFOLLOW fds (Python tempfile, SQLite): --inherit-fd fails with ELOOP;
#      the rewritten image restores it, and its report after restore equals the one before dump;
#   B. the same without O_NOFOLLOW: --inherit-fd restores it, but the names read back are the
#      lost+found/checkpoint names (the second defect);
#   C. the same with the rewritten image: identical report;
#   D. the workload's directory moved away before the restart: the missing parent is made for
#      the restore and removed at post-restore, identical report;
#   E. an original path taken by a new file before the restart: a sibling name is used, and
#      only that file's names differ.
#
#   integration/criu-image-proof.sh [btrfs|ext4]        (root)
#
# Env: CRIU (default /opt/snapckpt/criu/bin/criu); REWRITE, the criu_image_rewrite binary
# (default: cargo build --example criu_image_rewrite). Works in its own loop filesystem under
# /var/tmp/criu-proof-*, removed at exit with everything it started.
set -euo pipefail

FS=${1:-btrfs}
CRIU=${CRIU:-/opt/snapckpt/criu/bin/criu}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(mktemp -d /var/tmp/criu-proof-XXXXXX)
MNT=$ROOT/mnt
LOOP=
STARTED=()

cleanup() {
    set +e
    for p in "${STARTED[@]}"; do
        # Only our workload (a restored one keeps its pid).
        grep -qa nofollow "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p"
    done
    for p in "${STARTED[@]}"; do wait_gone "$p" >/dev/null 2>&1; done
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$ROOT"
}
trap cleanup EXIT

say() { printf '\n=== %s\n' "$*"; }
fail() { printf 'PROOF FAILED: %s\n' "$*"; exit 1; }
wait_gone() { for _ in $(seq 200); do [ -d "/proc/$1" ] || return 0; sleep 0.05; done; fail "pid $1 still there"; }
wait_ends() { # FILE N: until FILE holds N reports
    for _ in $(seq 200); do
        [ "$(grep -c '^END$' "$1" 2>/dev/null)" -ge "$2" ] && return 0
        sleep 0.05
    done
    cat "$1"
    fail "no report $2 in $1"
}
report_n() { awk -v n="$2" '/^END$/ { c++; next } c == n - 1 && /^(FD|MAP|CWD) /' "$1"; }

[ "$(id -u)" = 0 ] || fail "run as root"
say "CRIU: $("$CRIU" --version | tr '\n' ' ')  kernel $(uname -r)  fs $FS"
gcc -O2 -Wall -Wextra -o "$ROOT/nofollow" "$REPO/integration/progs/nofollow.c"
if [ -z "${REWRITE:-}" ]; then
    (cd "$REPO" && cargo build -q --example criu_image_rewrite)
    REWRITE=${CARGO_TARGET_DIR:-$REPO/target}/debug/examples/criu_image_rewrite
fi

truncate -s 512M "$ROOT/fs.img"
LOOP=$(losetup -f --show "$ROOT/fs.img")
case $FS in
    btrfs) mkfs.btrfs -q -f "$LOOP" ;;
    ext4) mkfs.ext4 -q -F "$LOOP" ;;
    *) fail "fs $FS: btrfs or ext4" ;;
esac
mkdir "$MNT"
mount "$LOOP" "$MNT"
mkdir -p "$MNT/lost+found/checkpoint"
chmod 700 "$MNT/lost+found" "$MNT/lost+found/checkpoint"

# start NAME [plain]: run the workload in $MNT/NAME, wait for its first report, then ask for
# the one compared after restore. Sets PID, OUT, WORK.
start() {
    OUT=$ROOT/$1.out
    WORK=$MNT/$1
    : >"$OUT"
    mkdir "$WORK"
    # The subshell exits at once: the workload is nobody's child here (a zombie would keep
    # its pid and block the restore).
    (setsid "$ROOT/nofollow" "$WORK" ${2:-} >>"$OUT" 2>&1 </dev/null &)
    wait_ends "$OUT" 1
    PID=$(awk '/^PID/ { print $2; exit }' "$OUT")
    STARTED+=("$PID")
    kill -USR1 "$PID"
    wait_ends "$OUT" 2
    report_n "$OUT" 2 >"$ROOT/$1.before"
    sed 's/^/  /' "$ROOT/$1.before"
}

# preserve: what snapckpt's take does. One object per inode among the task's fds, mappings and
# cwd that are unlinked, kept under lost+found/checkpoint: a hard link (linkat of the
# /proc magic link, AT_SYMLINK_FOLLOW: nlink > 0 or O_TMPFILE), else a copy (orphan), or a new
# directory of the same mode and owner. Sets KEYS ORIG KEEP KIND EXT.
preserve() {
    KEYS=() ORIG=() KEEP=() KIND=() EXT=()
    local mnt f l ino key keep kind i=0 seen=" "
    mnt=$(awk -v m="$MNT" '$5 == m { print $1 }' "/proc/$PID/mountinfo")
    for f in "/proc/$PID"/fd/* "/proc/$PID"/map_files/* "/proc/$PID/cwd"; do
        l=$(readlink "$f") || continue
        [[ $l == "$MNT/"*" (deleted)" ]] || continue
        ino=$(stat -L -c %i "$f")
        key=$(printf 'file[%x:%x]' "$mnt" "$ino")
        [[ $seen == *" $key "* ]] && continue
        seen+="$key "
        keep=$MNT/lost+found/checkpoint/unlink-at-restart-$$-$i
        if [ -d "$f" ]; then
            kind=d
            mkdir "$keep"
            chmod --reference="$f" "$keep"
            chown --reference="$f" "$keep"
        elif ln -L "$f" "$keep" 2>/dev/null; then
            kind=f
        else
            kind=f
            cp --reflink=auto --sparse=always --preserve=mode,ownership,timestamps "$f" "$keep"
        fi
        KEYS+=("$key") ORIG+=("${l% (deleted)}") KEEP+=("$keep") KIND+=("$kind") EXT+=(--external "$key")
        printf '  %-14s %s  %s  ->  %s\n' "$key" "$kind" "${l% (deleted)}" "$keep"
        i=$((i + 1))
    done
}

dump() { # DIR
    mkdir "$1"
    "$CRIU" dump -t "$PID" -D "$1" -o dump.log -v4 "${EXT[@]}" || {
        tail -20 "$1/dump.log"
        fail "dump"
    }
    wait_gone "$PID"
    echo "  files.img after dump (externals):"
    "$REWRITE" list "$1" | grep 'ext=true' | sed 's/^/    /'
}

# restore_inherit DIR LOG: snapckpt's current hand-over: each preserved object opened and
# passed as --inherit-fd fd[N]:file[MNTID:INO].
restore_inherit() {
    local args=() fds=() i fd rc=0
    for i in "${!KEYS[@]}"; do
        exec {fd}<"${KEEP[$i]}"
        fds+=("$fd")
        args+=(--inherit-fd "fd[$fd]:${KEYS[$i]}")
    done
    "$CRIU" restore -D "$1" -d -o "$2" -v4 "${args[@]}" || rc=$?
    for fd in "${fds[@]}"; do exec {fd}<&-; done
    return $rc
}

# restore_rewrite DIR COPY: the new hand-over. Each preserved object is given a name at its
# original path (a sibling if that is taken; missing parents made), COPY is written with those
# paths in files.img, and CRIU's post-restore action removes every name (original path,
# lost+found name, made parents) before the tasks run again.
restore_rewrite() {
    local names=$1.names pairs=() made=() i t d j
    : >"$names"
    for i in "${!KEYS[@]}"; do
        t=${ORIG[$i]}
        if [ -e "$t" ] || [ -L "$t" ]; then t=$t.restore-$i; fi
        d=${t%/*}
        while [ ! -d "$d" ]; do
            made=("$d" "${made[@]}")
            d=${d%/*}
        done
        for d in "${made[@]}"; do [ -d "$d" ] || mkdir "$d"; done
        if [ "${KIND[$i]}" = d ]; then
            mkdir "$t"
            chmod --reference="${KEEP[$i]}" "$t"
            chown --reference="${KEEP[$i]}" "$t"
        else
            ln "${KEEP[$i]}" "$t"
        fi
        printf '%s %s\n%s %s\n' "${KIND[$i]}" "$t" "${KIND[$i]}" "${KEEP[$i]}" >>"$names"
        pairs+=("${KEYS[$i]}=$t")
    done
    for ((j = ${#made[@]} - 1; j >= 0; j--)); do printf 'd %s\n' "${made[$j]}" >>"$names"; done
    "$REWRITE" rewrite "$1" "$2" "${pairs[@]}" | sed 's/^/  /'
    cat >"$ROOT/post-restore.sh" <<EOF
#!/bin/sh
# CRIU runs this at every action; at post-restore every fd, mapping and cwd is open and the
# tasks are still held by CRIU (they resume after CR_STATE_COMPLETE). Failing aborts the restore.
echo "\$CRTOOLS_SCRIPT_ACTION" >>"$1.actions"
[ "\$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0
while read -r kind path; do
    if [ "\$kind" = d ]; then rmdir -- "\$path"; else unlink -- "\$path"; fi || exit 1
done <"$names"
EOF
    chmod +x "$ROOT/post-restore.sh"
    "$CRIU" restore -D "$2" -d -o restore.log -v4 --action-script "$ROOT/post-restore.sh" || {
        tail -20 "$2/restore.log"
        fail "restore from the rewritten image"
    }
    echo "  actions seen: $(tr '\n' ' ' <"$1.actions")"
}

# after NAME: ask the restored workload for its report and compare it with the one before dump.
after() {
    kill -USR1 "$PID"
    wait_ends "$OUT" 3
    report_n "$OUT" 3 >"$ROOT/$1.after"
    if diff -u "$ROOT/$1.before" "$ROOT/$1.after" >"$ROOT/$1.diff"; then
        echo "  report after restore == report before dump"
        return 0
    fi
    sed 's/^/  /' "$ROOT/$1.diff"
    return 1
}

finish() { # kill the restored workload
    kill -9 "$PID"
    wait_gone "$PID"
}

say "A. O_NOFOLLOW workload, report before dump:"
start a
preserve
dump "$ROOT/img-a"
say "A1. restore with --inherit-fd (snapckpt today)"
if restore_inherit "$ROOT/img-a" restore-inherit.log; then fail "--inherit-fd restore of O_NOFOLLOW fds succeeded"; fi
grep -E 'Too many levels of symbolic links' "$ROOT/img-a/restore-inherit.log" | head -3 | sed 's/^/  /'
grep -q 'Too many levels of symbolic links' "$ROOT/img-a/restore-inherit.log" || fail "no ELOOP in the log"
wait_gone "$PID"
say "A2. restore from the rewritten image"
restore_rewrite "$ROOT/img-a" "$ROOT/img-a.restore"
after a || fail "A2: report differs"
echo "  names left in $WORK: $(ls -A "$WORK" | tr '\n' ' ')  in lost+found/checkpoint: $(ls -A "$MNT/lost+found/checkpoint" | wc -l)"
echo "  after restore:"
sed 's/^/  /' "$ROOT/a.after"
finish

say "B. the same without O_NOFOLLOW, restored with --inherit-fd (names then unlinked, as snapckpt does)"
start b plain
preserve
dump "$ROOT/img-b"
restore_inherit "$ROOT/img-b" restore-inherit.log || fail "B: --inherit-fd restore"
for i in "${!KEEP[@]}"; do
    if [ "${KIND[$i]}" = d ]; then rmdir "${KEEP[$i]}"; else unlink "${KEEP[$i]}"; fi
done
if after b; then fail "B: expected the lost+found names"; fi
finish

say "C. the same without O_NOFOLLOW, restored from the rewritten image"
start c plain
preserve
dump "$ROOT/img-c"
restore_rewrite "$ROOT/img-c" "$ROOT/img-c.restore"
after c || fail "C: report differs"
finish

say "D. the workload's directory moved away before the restart"
start d
preserve
dump "$ROOT/img-d"
mv "$WORK" "$WORK.moved"
restore_rewrite "$ROOT/img-d" "$ROOT/img-d.restore"
after d || fail "D: report differs"
[ ! -e "$WORK" ] || fail "D: the made parent $WORK is left"
echo "  $WORK made for the restore and removed again"
finish

say "E. the orphan's original path taken by a new file before the restart"
start e
preserve
dump "$ROOT/img-e"
echo new >"${ORIG[0]}"
restore_rewrite "$ROOT/img-e" "$ROOT/img-e.restore"
if after e; then fail "E: expected the sibling name"; fi
[ "$(grep -c '^[-+]FD' "$ROOT/e.diff")" = 4 ] && [ "$(grep -c '^[-+]' "$ROOT/e.diff")" = 6 ] ||
    fail "E: more than the two fds of that file differ"
[ "$(cat "${ORIG[0]}")" = new ] || fail "E: the new file was touched"
echo "  only the names of fds 3 and 4 differ (sibling name); the new file at the path is untouched"
finish

say "PROOF OK ($FS): --inherit-fd fails on O_NOFOLLOW (ELOOP) and renames files; the rewritten image restores both exactly"
