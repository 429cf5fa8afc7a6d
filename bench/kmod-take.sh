#!/bin/bash
# snapckpt take time vs orphan size, with and without the snapckpt_relink kernel module (kmod/),
# on ext4 over an LVM thin LV, in the QEMU test guest (the host has no module dir and no
# device-mapper; TCG, so absolute times are slow: compare the rows, not with the host benches).
#
# Usage: bash bench/kmod-take.sh      (as root; env: SIZES="1 16 64 256 1024" (MiB, dense),
#                                      REPS=1, MODES="module copy", RESULTS_DIR=bench/results,
#                                      KMOD_BENCH_TIMEOUT=1800, KEEP=1 keeps the share)
#
# Builds snapckpt (cargo build --release), the static ufiles workload and the module for the
# guest kernel (kmod/build.sh), boots the guest once (integration/vm/run.sh) running
# integration/vm/kmod-guest/bench.sh: per size one `ufiles setup DIR dense:N` workload, then per
# mode `snapckpt take --pid P --engine none --job J` (J: the fs, snapshot = "lvm"; sync before;
# the task is thawed)
# with the module loaded (method kernel-link: the orphan's own inode gets a name) and unloaded
# (method copy-range: the data copied into a new inode), `delete --force`, fstrim. Writes
# RESULTS_DIR/kmod-take.{csv,md,log} and prints the table.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
VM=$REPO/integration/vm
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
log() { echo "[kmod-take] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }

SHARE=$(mktemp -d "${TMPDIR:-/tmp}/snapckpt-kmod-bench.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then trap 'log "kept $SHARE"' EXIT; else trap 'rm -rf "$SHARE"' EXIT; fi

"$VM/build-image.sh" "${SNAPCKPT_VM_CACHE:-/var/cache/snapckpt-vm}"
cp "$("$REPO/kmod/build.sh")" "$SHARE/snapckpt_relink.ko"
log "cargo build --release"
(cd "$REPO" && cargo build --release --quiet --bin snapckpt) >&2
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case "$TARGET" in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
cp "$TARGET/release/snapckpt" "$SHARE/snapckpt"
cc -static -O1 -o "$SHARE/ufiles" "$REPO/integration/progs/ufiles.c"
cp "$VM/kmod-guest/bench.sh" "$SHARE/test.sh"
cp "$VM/kmod-guest/sc-lib.sh" "$SHARE/"
chmod +x "$SHARE/test.sh" "$SHARE/snapckpt" "$SHARE/ufiles"
SIZES=${SIZES:-1 16 64 256 1024}
REPS=${REPS:-1}
MODES=${MODES:-module copy}
printf 'SIZES="%s"\nREPS=%s\nMODES="%s"\n' "$SIZES" "$REPS" "$MODES" > "$SHARE/env"

T0=$(date +%s)
rc=0
VM_DISKS=${VM_DISKS:-6G 2G} VM_QUIET=${VM_QUIET:-1} "$VM/run.sh" "$SHARE" "${KMOD_BENCH_TIMEOUT:-1800}" < /dev/null || rc=$?
T1=$(date +%s)
mkdir -p "$RESULTS_DIR"
cp "$SHARE/console.log" "$RESULTS_DIR/kmod-take.log" 2>/dev/null || true
[ -s "$SHARE/bench.tsv" ] || { log "no results (run.sh exited $rc; log: $RESULTS_DIR/kmod-take.log)"; exit 1; }

{
  echo "size_mib,mode,rep,take_s,relink_ms,snapshot_ms,frozen_ms,method,bytes_copied"
  tr ' ' ',' < "$SHARE/bench.tsv"
} > "$RESULTS_DIR/kmod-take.csv"

KVER=$(grep -m1 -o 'kernel=[^ ]*' "$SHARE/console.log" | cut -d= -f2 || true)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$SHARE/bench.tsv" "$RESULTS_DIR/kmod-take.md" "$KVER" "$COMMIT" "$REPS" "$((T1 - T0))" "$rc" <<'EOF'
import sys, statistics, datetime
tsv, md, kver, commit, reps, wall, rc = sys.argv[1:]
rows = {}
for line in open(tsv):
    f = line.split()
    if len(f) < 9:
        continue
    mib, mode = int(f[0]), f[1]
    r = rows.setdefault((mib, mode), {"take": [], "relink": [], "snap": [], "frozen": [], "method": f[7], "bytes": int(f[8])})
    r["take"].append(float(f[3])); r["relink"].append(float(f[4])); r["snap"].append(float(f[5])); r["frozen"].append(float(f[6]))
med = statistics.median
def cell(r, k, fmt):
    return fmt.format(med(r[k])) if r else "-"
sizes = sorted({k[0] for k in rows})
out = []
out.append("# snapckpt take vs orphan size, with and without the snapckpt_relink module\n")
out.append(f"Measured {datetime.datetime.utcnow():%Y-%m-%dT%H:%MZ} by `bench/kmod-take.sh` in the QEMU test guest "
           f"(TCG, 2 vCPUs, kernel {kver or '?'}), snapckpt {commit}, {reps} run(s) per point (median), guest run {wall} s"
           + ("" if rc == "0" else f" (run.sh exited {rc})") + ".\n")
out.append("One `ufiles setup DIR dense:N` task holding a dense orphan (nlink 0) of N bytes on ext4 over an LVM thin LV; "
           "`snapckpt take --pid P --engine none --job J` (J names the filesystem, `snapshot = \"lvm\"`) after a `sync`, the task thawed after it. *module*: "
           "/dev/snapckpt-relink present, the orphan's own inode linked (method `kernel-link`, no data written); "
           "*copy*: the module unloaded, the data copied into a new inode (method `copy-range`), fsync'd, linked. "
           "take = wall time of the command; relink, snapshot (lvcreate of the thin snapshot) and frozen from "
           "`checkpoint.json` `timings`. TCG makes everything slow; the ratio is what carries over.\n")
out.append("| orphan | take, module (s) | relink (ms) | frozen (ms) | take, copy (s) | relink (ms) | frozen (ms) | bytes copied | take copy / module |")
out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in sizes:
    m, c = rows.get((s, "module")), rows.get((s, "copy"))
    size = f"{s} MiB" if s < 1024 else f"{s // 1024} GiB"
    ratio = f"{med(c['take']) / med(m['take']):.1f}x" if m and c else "-"
    out.append(f"| {size} | {cell(m, 'take', '{:.2f}')} | {cell(m, 'relink', '{:.0f}')} | {cell(m, 'frozen', '{:.0f}')} | "
               f"{cell(c, 'take', '{:.2f}')} | {cell(c, 'relink', '{:.0f}')} | {cell(c, 'frozen', '{:.0f}')} | "
               f"{c['bytes'] if c else '-'} | {ratio} |")
methods = sorted({(k[1], v["method"]) for k, v in rows.items()})
out.append("\nMethods recorded: " + ", ".join(f"{mode}: `{m}`" for mode, m in methods) + ".")
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
log "guest run $((T1 - T0)) s; wrote $RESULTS_DIR/kmod-take.{md,csv,log}"
[ "$rc" = 0 ]
