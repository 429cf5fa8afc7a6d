#!/usr/bin/env python3
"""Turn the raw CSV/JSON of the bench scripts into markdown tables (medians).

    summarize.py take-vs-criu   take-vs-criu.csv
    summarize.py frozen-many    frozen-many.csv
    summarize.py scan-vs-lsof   scan-vs-lsof.json scan-vs-lsof-counts.txt
    summarize.py copy-fallback  copy-fallback.csv
"""
import csv
import json
import statistics
import sys
from collections import OrderedDict


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(rows, key):
    vals = [num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fms(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def fbytes(v):
    if v is None:
        return "-"
    for unit, n in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= n:
            return f"{v / n:.1f} {unit}"
    return f"{v:.0f} B"


def rng(rows, key):
    """median and (min-max) when there are several runs"""
    vals = [v for v in (num(r.get(key)) for r in rows) if v is not None]
    if not vals:
        return "-"
    m = fms(statistics.median(vals))
    return m if len(vals) < 2 else f"{m} ({fms(min(vals))}–{fms(max(vals))})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.1f}x"


def groups(rows, keys):
    out = OrderedDict()
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def verified(rows):
    v = {r.get("verified", "") for r in rows}
    if v == {"yes"}:
        return "yes"
    if "NO" in v:
        return "**NO**"
    return "/".join(sorted(v)) or "-"


def take_vs_criu(path):
    rows = list(csv.DictReader(open(path)))
    reps = max((int(r["rep"]) for r in rows), default=0)
    print(f"Median of {reps} runs each. Times in ms (wall clock of the whole command). "
          "snapckpt = `take --engine criu --snapshot btrfs` / `restart --snapshot --mount-root` "
          "(xfs: `--snapshot none`, the orphan reflinked on the live fs, restart on the live fs); "
          "CRIU = `criu dump --ghost-limit 64G` / `criu restore -d`; durable CRIU = the dump + `sync -f` of its image directory. "
          "*dirty*: the take starts right after the workload wrote its data; *synced*: a `sync` between them. "
          "Ratios are CRIU / snapckpt (of the medians); (min–max) of the runs in brackets.\n")
    print("`snapckpt take` is the whole command; since the tasks are killed only after the image "
          "is published, it ends with their exit (*tasks' exit*, reported by take), and "
          "*published* = take − exit is when the checkpoint was complete. Plain CRIU's dump "
          "also ends with its kill of the task; CRIU does not report that part.\n")
    print("| fs | cache | orphan | size | snapckpt take | of which tasks' exit | published | of which frozen | CRIU dump | durable CRIU dump | dump ratio (take) | dump ratio (published) | durable ratio (published) | take --leave-running (frozen) | then kill -9 until gone | snapckpt image | CRIU image | snapckpt restart | CRIU restore | restore ratio | restored data checked |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        r.setdefault("cache", "synced")
    g = groups(rows, ("fs", "cache", "shape", "size"))
    for (fs, cache, shape, size), rs in g.items():
        s = [r for r in rs if r["tool"] == "snapckpt"]
        c = [r for r in rs if r["tool"] == "criu"]
        lr = [r for r in rs if r["tool"] == "snapckpt-leave-running"]
        lrs = f"{fms(med(lr, 'take_ms'))} ({fms(med(lr, 'frozen_ms'))})" if lr else "-"
        kills = fms(med(lr, "kill_ms")) if lr else "-"
        st, ct = med(s, "take_ms"), med(c, "take_ms")
        sr, cr = med(s, "restart_ms"), med(c, "restart_ms")
        pub = [dict(r, pub_ms=str(float(r["take_ms"]) - float(r["kill_ms"]))) for r in s if r.get("kill_ms")]
        pt = med(pub, "pub_ms") if pub else None
        dt = med(c, "durable_ms")
        print(f"| {fs} | {cache} | {shape} | {size} | {rng(s, 'take_ms')} | {fms(med(s, 'kill_ms'))} | {rng(pub, 'pub_ms') if pub else '-'} | {fms(med(s, 'frozen_ms'))} | {rng(c, 'take_ms')} | {rng(c, 'durable_ms')} | {ratio(ct, st)} | {ratio(ct, pt) if pt else '-'} | {ratio(dt, pt) if pt else '-'} | {lrs} | {kills} | "
              f"{fbytes(med(s, 'image_bytes'))} | {fbytes(med(c, 'image_bytes'))} | {rng(s, 'restart_ms')} | {rng(c, 'restart_ms')} | {ratio(cr, sr)} | "
              f"{verified(s)} / {verified(c)} |")
    print("\nsnapckpt stages (ms, medians, from checkpoint.json `timings`; `dump` is CRIU's part inside take; "
          "`frozen` is from freeze to the kill after publishing), beside CRIU's own frozen time (stats-dump) for both:\n")
    print("| fs | cache | orphan | size | freeze | scan | relink | snapshot | dump | frozen | CRIU frozen_time in snapckpt's dump | plain CRIU frozen_time | plain CRIU memwrite |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (fs, cache, shape, size), rs in g.items():
        s = [r for r in rs if r["tool"] == "snapckpt"]
        c = [r for r in rs if r["tool"] == "criu"]
        print(f"| {fs} | {cache} | {shape} | {size} | " + " | ".join(fms(med(s, k)) for k in ("freeze_ms", "scan_ms", "relink_ms", "snapshot_ms", "dump_ms", "frozen_ms"))
              + f" | {fms(med(s, 'criu_frozen_ms'))} | {fms(med(c, 'criu_frozen_ms'))} | {fms(med(c, 'criu_memwrite_ms'))} |")


def frozen_many(path):
    rows = list(csv.DictReader(open(path)))
    print("Medians, ms (min–max in brackets). Stages from checkpoint.json.\n")
    print("| engine | runs | take wall | freeze | scan | relink | snapshot | dump | frozen | restart wall | objects |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (engine,), rs in groups(rows, ("engine",)).items():
        ok = [r for r in rs if r.get("status", "ok") == "ok"]
        if not ok:
            print(f"| {engine} | 0 | failed: {rs[0].get('status')} | | | | | | | | |")
            continue
        print(f"| {engine} | {len(ok)} | {rng(ok, 'take_ms')} | " + " | ".join(fms(med(ok, k)) for k in ("freeze_ms", "scan_ms", "relink_ms", "snapshot_ms", "dump_ms"))
              + f" | {rng(ok, 'frozen_ms')} | {rng(ok, 'restart_ms')} | {fms(med(ok, 'objects'))} |")


def scan_vs_lsof(path, counts):
    d = json.load(open(path))
    print("| command | median ms | mean ms | min ms | max ms | runs |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in d["results"]:
        print(f"| `{r['command']}` | {r['median'] * 1000:.1f} | {r['mean'] * 1000:.1f} | {r['min'] * 1000:.1f} | {r['max'] * 1000:.1f} | {len(r['times'])} |")
    if counts:
        print()
        for line in open(counts):
            print(line.rstrip() + "  ")


def copy_fallback(path):
    rows = list(csv.DictReader(open(path)))
    reps = max((int(r["rep"]) for r in rows), default=0)
    print(f"Median of {reps} runs. ms.\n")
    print("| fs | orphan | size | take wall | relink (copy + fsync) | frozen | bytes copied | `cp --sparse=always` | relink / cp | cp + `sync FILE` (fsync) | relink / (cp + fsync) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (fs, shape, size), rs in groups(rows, ("fs", "shape", "size")).items():
        rl, cp, cps = med(rs, "relink_ms"), med(rs, "cp_ms"), med(rs, "cp_sync_ms")
        print(f"| {fs} | {shape} | {size} | {fms(med(rs, 'take_ms'))} | {fms(rl)} | {fms(med(rs, 'frozen_ms'))} | {fbytes(med(rs, 'bytes_copied'))} | {fms(cp)} | {ratio(rl, cp)} | {fms(cps)} | {ratio(rl, cps)} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"take-vs-criu": take_vs_criu, "frozen-many": frozen_many, "scan-vs-lsof": scan_vs_lsof, "copy-fallback": copy_fallback}[cmd](*args)
