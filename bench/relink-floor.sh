#!/usr/bin/env bash
# The filesystem's own cost of what a take of frozen-many.sh's workload must do while the
# tasks are frozen, without snapckpt: on a loop btrfs, 500 orphan-like files (64 KiB each,
# written and synced) and 500 files with a second name, then, timed one step at a time,
#   clone   500 x (O_TMPFILE in one directory, FICLONE, futimens, linkat into it)
#   link    500 x linkat of a file into the same directory (the name-gone files' new names)
#   commit  one btrfs snapshot of the filesystem (its transaction commit writes the new names)
#   unlink  500 x unlinkat of the linked names (the names leading to the tasks' own inodes)
# on 1 thread and on 2 (the relink's threads on this 2-core machine). No process is frozen
# and nothing is scanned: the sum is the floor under snapckpt's relink + snapshot + removal
# stages for 1,000 files in one checkpoint directory.
#
# Env: N=500 BYTES=65536 REPS=5
# Output: $RESULTS_DIR/relink-floor.csv, relink-floor.md
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=${N:-500}
BYTES=${BYTES:-65536}
REPS=${REPS:-5}

bench_init relink-floor
cd "$W"
MNT=$W/fs
mkfs_loop btrfs 4G "$MNT"
CSV=$RESULTS_DIR/relink-floor.csv
echo "threads,rep,clone_ms,link_ms,commit_ms,unlink_ms,sum_ms" > "$CSV"

for rep in $(seq "$REPS"); do
  for threads in 1 2; do
    if [ -d "$MNT/snap" ]; then btrfs subvolume delete "$MNT/snap" >/dev/null; fi
    rm -rf "${MNT:?}/src" "$MNT/other" "$MNT/ck"
    python3 - "$MNT" "$N" "$BYTES" "$threads" "$rep" >> "$CSV" <<'EOF'
import concurrent.futures as cf, fcntl, os, subprocess, sys, time
mnt, n, size, threads, rep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
src, other, ck = f"{mnt}/src", f"{mnt}/other", f"{mnt}/ck"
for d in (src, other, ck):
    os.makedirs(d)
data = os.urandom(size)
srcs = []
for i in range(n):
    p = f"{src}/orphan-{i}"
    with open(p, "wb") as f:
        f.write(data)
    srcs.append(os.open(p, os.O_RDONLY))
    with open(f"{src}/gone-{i}", "wb") as f:
        f.write(b"x")
    os.link(f"{src}/gone-{i}", f"{other}/gone-{i}")
os.sync()
ckfd = os.open(ck, os.O_RDONLY | os.O_DIRECTORY)
FICLONE = 0x40049409
def clone(i):
    t = os.open(ck, os.O_TMPFILE | os.O_RDWR, 0o644)
    fcntl.ioctl(t, FICLONE, srcs[i])
    os.utime(t, ns=(1, 1))
    os.link(f"/proc/self/fd/{t}", f"c-{i}", dst_dir_fd=ckfd, follow_symlinks=True)
    os.close(t)
def link(i):
    os.link(f"{other}/gone-{i}", f"l-{i}", dst_dir_fd=ckfd)
def unlink(i):
    os.unlink(f"l-{i}", dir_fd=ckfd)
def timed(fn):
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(fn, range(n)))
    return (time.perf_counter() - t) * 1e3
c, l = timed(clone), timed(link)
t = time.perf_counter()
subprocess.run(["btrfs", "subvolume", "snapshot", "-r", mnt, f"{mnt}/snap"], check=True, stdout=subprocess.DEVNULL)
m = (time.perf_counter() - t) * 1e3
u = timed(unlink)
print(f"{threads},{rep},{c:.1f},{l:.1f},{m:.1f},{u:.1f},{c + l + m + u:.1f}")
EOF
    btrfs subvolume delete "$MNT/snap" >/dev/null
  done
  log "rep $rep: $(tail -2 "$CSV" | tr '\n' ' ')"
done

python3 - "$CSV" > "$RESULTS_DIR/relink-floor.md" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ["clone_ms", "link_ms", "commit_ms", "unlink_ms", "sum_ms"]
print("Medians, ms (min–max). 500 clones + 500 links into one directory, one snapshot, 500 unlinks.\n")
print("| threads | runs | " + " | ".join(c[:-3] for c in cols) + " |")
print("|---:|---:|" + "---:|" * len(cols))
for th in ("1", "2"):
    rs = [r for r in rows if r["threads"] == th]
    cells = []
    for c in cols:
        v = [float(r[c]) for r in rs]
        cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})")
    print(f"| {th} | {len(rs)} | " + " | ".join(cells) + " |")
EOF
cat "$RESULTS_DIR/relink-floor.md"
