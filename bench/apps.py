#!/usr/bin/env python3
"""The driver of bench/apps.sh: real applications checkpointed by snapckpt and by plain CRIU,
in one run, on one loop btrfs. Not meant to be run alone (apps.sh makes the filesystem, builds
snapckpt and cleans up); it prints one CSV row per measurement to CSV and a log to stderr.

    apps.py bench MNT WORK CSV        (env: BIN, CRIU, APPS="python sqlite nginx mariadb", REPS=3)
    apps.py summarize CSV             markdown tables (medians) on stdout

Each measurement starts the application fresh in its own directory on MNT, exactly as
integration/tests/apps.rs does (the workloads are integration/progs/*.py), brings it into its
state (Python: TemporaryFile, deleted NamedTemporaryFile, mapped unlinked file; SQLite: WAL
database deleted while open; nginx: an 8 MiB upload with 6 MiB in the worker's unlinked temp
file; MariaDB: a big query in flight, sorting into unlinked files in tmpdir, and an open transaction), then
  * snapckpt: `snapckpt take --pid P --tree --engine criu --snapshot btrfs` and
    `snapckpt restart ID --snapshot` (private mount namespace, the clone at the mount point);
  * criu:     `criu dump -t P -D DIR --file-locks --ghost-limit 16G` (unlinked files copied into
    the image as ghost files) and `criu restore -D DIR -d --file-locks`;
times the take/dump and the restart/restore (wall clock of the whole command, after a `sync`),
reads the frozen time (snapckpt: checkpoint.json `timings.frozen_ms`, freeze to kill after the
image is published; both: CRIU's own `frozen_time` from stats-dump), the image size (`du -sb`,
logs excluded), and checks the restored application (the same report, the query's result and
the rows, the upload's hash): a check that fails is an error, not a number.
"""

import csv
import hashlib
import http.client
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time

PROGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration", "progs")
PYTHON = "/usr/bin/python3"
BIN = os.environ.get("BIN", "snapckpt")
CRIU = os.environ.get("CRIU", "/opt/snapckpt/criu/bin/criu")
TREES = []  # every tree started, killed at exit


def log(msg):
    print(f"[apps {time.strftime('%T')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, timeout=180, check=True):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def wait(what, cond, secs=60, every=0.02):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out ({secs} s) waiting for {what}")


def read(p):
    with open(p) as f:
        return f.read()


def alive(pid):
    try:
        st = read(f"/proc/{pid}/stat")
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def session(pid):
    try:
        return int(read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


class Tree:
    """A process tree started as a session leader, nothing inherited but /dev/null on 0-2."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        self.pid = self.p.pid
        TREES.append(self)
        if os.environ.get("TREES_FILE"):
            with open(os.environ["TREES_FILE"], "a") as f:
                f.write(f"{self.pid}\n")

    def tasks(self):
        out = []
        for e in os.listdir("/proc"):
            if e.isdigit() and session(int(e)) == self.pid and alive(int(e)):
                out.append(int(e))
        return out

    def reap(self):
        if self.p is not None:
            self.p.wait()
            self.p = None

    def kill(self):
        ts = self.tasks()
        for t in ts:
            try:
                os.kill(t, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap()
        for t in ts:
            wait(f"pid {t} gone", lambda: not alive(t), 30)

    def gone(self, tasks):
        """Wait until the dumped tasks' pids are free again (killed and reaped: the restore
        reuses them), so that neither restart nor restore is timed waiting for that."""
        self.reap()
        for t in tasks:
            wait(f"pid {t} gone after the dump", lambda: not os.path.exists(f"/proc/{t}"), 60)

    def view(self, path):
        return f"/proc/{self.pid}/root{path}"

    def signal(self, pid, sig):
        os.kill(pid, sig)


def ask(tree, path, sig, pid=None, secs=30):
    """Remove path (as the tree sees it), send sig (again every second) until it is back."""
    p = tree.view(path)
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    end = time.monotonic() + secs
    last = 0
    while time.monotonic() < end:
        if os.path.exists(p):
            return read(p)
        if not alive(tree.pid):
            raise RuntimeError(f"tree {tree.pid} died")
        if time.monotonic() - last >= 1:
            os.kill(pid or tree.pid, sig)
            last = time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"no {path}")


def wait_text(tree, path, what, sig=None, secs=60):
    last = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            t = read(tree.view(path))
        except OSError:
            t = ""
        if what in t:
            return t
        if sig and time.monotonic() - last >= 2:
            os.kill(tree.pid, sig)
            last = time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"no {what!r} in {path}")


def unlinked_bytes(tasks):
    """Total size of the distinct unlinked regular files the tasks hold (fds and mappings)."""
    seen = {}
    for t in tasks:
        for d in (f"/proc/{t}/fd", f"/proc/{t}/map_files"):
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                try:
                    if not os.readlink(f"{d}/{n}").endswith(" (deleted)"):
                        continue
                    st = os.stat(f"{d}/{n}")
                except OSError:
                    continue
                if st.st_nlink == 0 and (st.st_mode & 0o170000) == 0o100000:
                    seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def no_tmpfile_flag(report):
    out = []
    for w in report.split(" "):
        if w.startswith("flags="):
            try:
                w = "flags=%o" % (int(w[6:], 8) & ~0o20200000)
            except ValueError:
                pass
        out.append(w)
    return " ".join(out)


# ---- the applications: prepare(dir) -> (tree, state); verify(tree, dir, state) raises if wrong


class PythonApp:
    name = "python"

    def prepare(self, d, port):
        tree = Tree([PYTHON, f"{PROGS}/py_tmpfiles.py", d])
        wait("python report", lambda: os.path.exists(f"{d}/report"), 30)
        return tree, read(f"{d}/report")

    def verify(self, tree, d, state):
        after = ask(tree, f"{d}/report", signal.SIGUSR1)
        if no_tmpfile_flag(after) != no_tmpfile_flag(state):
            raise RuntimeError(f"python report differs:\n{state}\n{after}")


class SqliteApp:
    name = "sqlite"

    def prepare(self, d, port):
        tree = Tree([PYTHON, f"{PROGS}/sqlite_wal.py", d])
        wait("sqlite report", lambda: os.path.exists(f"{d}/report"), 30)
        return tree, read(f"{d}/report")

    def verify(self, tree, d, state):
        after = ask(tree, f"{d}/report", signal.SIGUSR1)
        if after != state:
            raise RuntimeError(f"sqlite report differs:\n{state}\n{after}")
        if not ask(tree, f"{d}/wrote", signal.SIGUSR2).startswith("WROTE count=20001 "):
            raise RuntimeError("sqlite: no commit after the restore")


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


class NginxApp:
    name = "nginx"

    def prepare(self, d, port):
        tree = Tree([PYTHON, f"{PROGS}/nginx_upload.py", d, str(port)])
        wait("upload client", lambda: os.path.exists(f"{d}/client.state"), 30)
        st = dict(w.split("=", 1) for w in read(f"{d}/client.state").split())

        def temp_written():
            for t in tree.tasks():
                try:
                    for n in os.listdir(f"/proc/{t}/fd"):
                        p = f"/proc/{t}/fd/{n}"
                        if "/client_temp/" in os.readlink(p) and os.stat(p).st_size + (16 << 10) >= int(st["sent"]):
                            return True
                except OSError:
                    pass
            return False

        wait("nginx temp file", temp_written, 30)
        return tree, (st, port)

    def verify(self, tree, d, state):
        st, port = state
        os.kill(int(st["pid"]), signal.SIGUSR1)
        res = wait_text(tree, f"{d}/client.result", "HTTP/1.1", secs=60)
        if not res.startswith("HTTP/1.1 201 "):
            raise RuntimeError(f"nginx upload: {res}")
        status, body = http_get(port, "/files/big.bin")
        if status != 200 or hashlib.sha256(body).hexdigest() != st["sha256"]:
            raise RuntimeError(f"nginx: the upload is not the body (status {status}, {len(body)} bytes)")


class MariadbApp:
    name = "mariadb"
    N = 1300

    def sql(self, port, q, db="appdb"):
        r = run(["/usr/bin/mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "-uroot", "-N", "-B",
                 "-D", db, "-e", q], timeout=120)
        return r.stdout.rstrip("\n")

    def state(self, port):
        return "\n".join([
            self.sql(port, "SELECT 't', COUNT(*), SUM(n), SUM(CRC32(CONCAT_WS('|', id, v, n))) FROM t"),
            self.sql(port, "SELECT 't2', COUNT(*), SUM(CRC32(CONCAT_WS('|', id, note))) FROM t2"),
            self.sql(port, "CHECKSUM TABLE t, t2 EXTENDED"),
        ])

    def prepare(self, d, port):
        run(["/usr/bin/mariadb-install-db", "--no-defaults", "--user=root", "--skip-test-db",
             f"--datadir={d}/data", "--auth-root-authentication-method=normal"], timeout=120)
        tree = Tree([PYTHON, f"{PROGS}/mariadb_tree.py", d, str(port)])
        wait("mariadbd", lambda: os.path.exists(f"{d}/server.ready"), 60)
        server = int(read(f"{d}/server.ready").split("=")[1])
        n = self.N
        self.sql(port, f"""CREATE DATABASE appdb; USE appdb;
            CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL) ENGINE=InnoDB;
            INSERT INTO t SELECT seq, CONCAT('v', MD5(seq)), (seq * 7919) % 100003 FROM seq_1_to_{n};
            CREATE TABLE t2 (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=InnoDB;
            INSERT INTO t2 SELECT seq, CONCAT('committed ', seq) FROM seq_1_to_500;""", db="mysql")
        with open(f"{d}/big.sql", "w") as f:
            f.write("SELECT 'big', COUNT(*), SUM(x) FROM (SELECT a.n * b.n AS x, CONCAT(a.v, b.v) AS s "
                    "FROM t a CROSS JOIN t b ORDER BY s LIMIT 1000000000) d;")
        want = f"big\t{n * n}\t{self.sql(port, 'SELECT SUM(n) * SUM(n) FROM t')}"
        before = self.state(port)
        wait_text(tree, f"{d}/tx.out", "tx-open\t502", signal.SIGUSR1, 30)

        def running():
            q = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                 "WHERE INFO LIKE 'SELECT ''big''%' AND TIME >= 1")
            if self.sql(port, q) != "1":
                return False
            # a sort file being written: an unlinked file in tmpdir with data (InnoDB's own are empty)
            for x in os.listdir(f"/proc/{server}/fd"):
                try:
                    h = os.readlink(f"/proc/{server}/fd/{x}")
                    if h.startswith(f"{d}/tmp/") and h.endswith(" (deleted)") and os.stat(f"/proc/{server}/fd/{x}").st_size > 0:
                        return True
                except OSError:
                    pass
            return False

        wait("the big query in flight", running, 30, every=0.2)
        return tree, (port, want, before)

    def verify(self, tree, d, state):
        port, want, before = state
        big = wait_text(tree, f"{d}/big.out", "big\t", secs=120).strip()
        if big != want:
            raise RuntimeError(f"mariadb big query: {big!r}, want {want!r}")
        now = self.state(port)
        if now != before:
            raise RuntimeError(f"mariadb rows differ:\n{before}\n{now}")
        wait_text(tree, f"{d}/tx.out", "tx-committed\t502", signal.SIGUSR2, 30)


APPS = {a.name: a for a in (PythonApp(), SqliteApp(), NginxApp(), MariadbApp())}


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def du(path, exclude_logs=True):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            if exclude_logs and f.endswith(".log"):
                continue
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def criu_frozen_ms(stats):
    """frozen_time (ms) from CRIU's stats-dump (StatsEntry.dump.frozen_time, microseconds)."""

    def varint(b, i):
        v = s = 0
        while True:
            c = b[i]
            i += 1
            v |= (c & 0x7F) << s
            s += 7
            if not c & 0x80:
                return v, i

    def fields(b):
        i, out = 0, {}
        while i < len(b):
            k, i = varint(b, i)
            f, w = k >> 3, k & 7
            if w == 0:
                v, i = varint(b, i)
            elif w == 2:
                n, i = varint(b, i)
                v = b[i:i + n]
                i += n
            elif w == 1:
                v, i = b[i:i + 8], i + 8
            elif w == 5:
                v, i = b[i:i + 4], i + 4
            else:
                break
            out[f] = v
        return out

    try:
        with open(stats, "rb") as f:
            b = f.read()
        n = struct.unpack("<I", b[8:12])[0]
        return fields(fields(b[12:12 + n])[1])[2] / 1000
    except (OSError, KeyError, IndexError, struct.error):
        return None


def criu_log_errors(path):
    try:
        lines = read(path).splitlines()
    except OSError as e:
        return str(e)
    errs = [ln for ln in lines if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    return "\n".join(errs[-20:] or lines[-20:])


def measure(app, tool, rep, mnt, work, writer):
    d = f"{mnt}/{app.name}-{tool}-{rep}"
    os.makedirs(d)
    port = free_port()
    tree, state = app.prepare(d, port)
    tasks = tree.tasks()
    ub = unlinked_bytes(tasks)
    run(["sync"])
    row = {"app": app.name, "tool": tool, "rep": rep, "tasks": len(tasks), "unlinked_bytes": ub}
    images = f"{work}/images"
    if tool == "snapckpt":
        t0 = time.monotonic()
        r = run([BIN, "take", "--pid", str(tree.pid), "--tree", "--engine", "criu", "--snapshot", "btrfs",
                 "--image-root", images, "--criu", CRIU])
        row["take_ms"] = round((time.monotonic() - t0) * 1000, 1)
        cid = r.stdout.split()[1]
        img = f"{images}/{cid}"
        rec = json.load(open(f"{img}/checkpoint.json"))
        row["frozen_ms"] = rec["timings"].get("frozen_ms")
    else:
        img = f"{work}/criu-{app.name}-{rep}"
        os.makedirs(img)
        t0 = time.monotonic()
        r = run([CRIU, "dump", "-t", str(tree.pid), "-D", img, "--file-locks", "--ghost-limit", "16G",
                 "-o", "dump.log"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"criu dump -t {tree.pid} failed (exit {r.returncode}):\n" + criu_log_errors(f"{img}/dump.log"))
        row["take_ms"] = round((time.monotonic() - t0) * 1000, 1)
        row["frozen_ms"] = ""
    row["criu_frozen_ms"] = criu_frozen_ms(f"{img}/stats-dump")
    row["image_bytes"] = du(img)
    tree.gone(tasks)
    run(["sync"])
    t0 = time.monotonic()
    if tool == "snapckpt":
        run([BIN, "restart", cid, "--snapshot", "--image-root", images, "--criu", CRIU])
    else:
        r = run([CRIU, "restore", "-D", img, "-d", "--file-locks", "-o", "restore.log"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"criu restore -D {img} failed (exit {r.returncode}):\n" + criu_log_errors(f"{img}/restore.log"))
    row["restore_ms"] = round((time.monotonic() - t0) * 1000, 1)
    if not alive(tree.pid):
        raise RuntimeError(f"{app.name}/{tool}: the tree's root is not back")
    t0 = time.monotonic()
    app.verify(tree, d, state)
    row["verify_ms"] = round((time.monotonic() - t0) * 1000, 1)
    row["verified"] = "yes"
    tree.kill()
    TREES.remove(tree)
    if tool == "snapckpt":
        run([BIN, "delete", cid, "--force", "--image-root", images])
    else:
        run(["rm", "-rf", img])
    writer.writerow(row)
    log(f"{app.name} {tool} #{rep}: " + " ".join(f"{k}={row[k]}" for k in
        ("take_ms", "frozen_ms", "criu_frozen_ms", "image_bytes", "restore_ms", "unlinked_bytes")))


FIELDS = ["app", "tool", "rep", "tasks", "unlinked_bytes", "take_ms", "frozen_ms", "criu_frozen_ms",
          "image_bytes", "restore_ms", "verify_ms", "verified"]


def why(e):
    """The line of an error that says what went wrong (snapckpt's or CRIU's), shortened."""
    lines = str(e).splitlines() or [""]
    for ln in lines:
        if "error:" in ln or ln.startswith("Error"):
            return ln.split("stderr: ")[-1][:300]
    return lines[0][:300]


def bench(mnt, work, csv_path):
    apps = os.environ.get("APPS", "python sqlite nginx mariadb").split()
    reps = int(os.environ.get("REPS", "3"))
    failed = []
    try:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            for name in apps:
                for rep in range(1, reps + 1):
                    for tool in ("snapckpt", "criu"):
                        try:
                            measure(APPS[name], tool, rep, mnt, work, w)
                        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                            log(f"ERROR {name} {tool} #{rep}: {e}")
                            failed.append(f"{name} {tool} #{rep}")
                            w.writerow({"app": name, "tool": tool, "rep": rep,
                                        "verified": "FAILED: " + why(e)})
                            for t in list(TREES):
                                t.kill()
                                TREES.remove(t)
                        f.flush()
    finally:
        for t in list(TREES):
            t.kill()
    if failed:
        log("FAILED: " + ", ".join(failed))
        sys.exit(1)


def fbytes(v):
    if v is None:
        return "-"
    for unit, n in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= n:
            return f"{v / n:.1f} {unit}"
    return f"{v:.0f} B"


def summarize(csv_path):
    rows = list(csv.DictReader(open(csv_path)))

    def med(app, tool, key):
        v = [float(r[key]) for r in rows if r["app"] == app and r["tool"] == tool and r[key] not in ("", "None", None)]
        return statistics.median(v) if v else None

    def rng(app, tool, key):
        v = [float(r[key]) for r in rows if r["app"] == app and r["tool"] == tool and r[key] not in ("", "None", None)]
        if not v:
            return "-"
        m = f"{statistics.median(v):,.0f}" if statistics.median(v) >= 100 else f"{statistics.median(v):.1f}"
        return m if len(v) < 2 else f"{m} ({min(v):,.0f}–{max(v):,.0f})"

    def ratio(a, b):
        return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}x"

    apps = list(dict.fromkeys(r["app"] for r in rows))
    n = max((int(r["rep"]) for r in rows), default=0)
    print(f"Median of {n} run(s) each, times in ms, (min–max) in brackets. snapckpt = `take --pid P --tree "
          "--engine criu --snapshot btrfs` / `restart ID --snapshot`; CRIU = `criu dump -t P --file-locks "
          "--ghost-limit 16G` / `criu restore -d --file-locks`. *frozen* = snapckpt's `timings.frozen_ms` "
          "(freeze to kill, after the image is published); *CRIU frozen_time* = CRIU's own, from stats-dump. "
          "Every restored application was checked (report, query result and rows, upload hash). "
          "*Unlinked data held*: the distinct nlink-0 files the tasks held at the take (fds and mappings; "
          "MariaDB's sort files grow while the query runs, so it differs from run to run): plain CRIU copies "
          "it into its image as ghost files, snapckpt's image holds none of it.")
    print()
    print("| app | tasks | unlinked data held (snapckpt / CRIU runs) | snapckpt take | of which frozen | CRIU frozen_time in it | CRIU dump "
          "| CRIU frozen_time | snapckpt image | CRIU image | snapckpt restart | CRIU restore | checked |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for a in apps:
        bad = [f"{r['tool']} #{r['rep']} {r['verified']}" for r in rows if r["app"] == a and r["verified"] != "yes"]
        ok = not bad
        tasks = med(a, "snapckpt", "tasks") or med(a, "criu", "tasks")
        print(f"| {a} | {'-' if tasks is None else f'{tasks:.0f}'} | {fbytes(med(a, 'snapckpt', 'unlinked_bytes'))} / "
              f"{fbytes(med(a, 'criu', 'unlinked_bytes'))} "
              f"| {rng(a, 'snapckpt', 'take_ms')} | {rng(a, 'snapckpt', 'frozen_ms')} "
              f"| {rng(a, 'snapckpt', 'criu_frozen_ms')} | {rng(a, 'criu', 'take_ms')} "
              f"| {rng(a, 'criu', 'criu_frozen_ms')} | {fbytes(med(a, 'snapckpt', 'image_bytes'))} "
              f"| {fbytes(med(a, 'criu', 'image_bytes'))} | {rng(a, 'snapckpt', 'restore_ms')} "
              f"| {rng(a, 'criu', 'restore_ms')} | {'yes' if ok else 'NO: ' + '; '.join(bad).replace('|', '/')} |")
    print()
    print("Ratios CRIU / snapckpt of the medians: take " + ", ".join(
        f"{a} {ratio(med(a, 'criu', 'take_ms'), med(a, 'snapckpt', 'take_ms'))}" for a in apps)
        + "; image " + ", ".join(
        f"{a} {ratio(med(a, 'criu', 'image_bytes'), med(a, 'snapckpt', 'image_bytes'))}" for a in apps)
        + "; restart " + ", ".join(
        f"{a} {ratio(med(a, 'criu', 'restore_ms'), med(a, 'snapckpt', 'restore_ms'))}" for a in apps) + ".")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "bench":
        bench(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == "summarize":
        summarize(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
