"""sqlite_wal: a SQLite database in WAL mode, deleted while open, for the application tests
(integration/tests/apps.rs). Uses Debian's python3 and its sqlite3 module (libsqlite3).

    python3 sqlite_wal.py DIR

Makes DIR/app.db (journal_mode=WAL, no automatic checkpoint): 20000 rows, the first 10000
checkpointed into the database file, the rest only in app.db-wal; a second connection holds a
read transaction open (its snapshot: the first 10000 rows and 5000 more). Then it unlinks app.db,
app.db-wal and app.db-shm: the process holds the three files with nlink 0 (the -shm one also
mapped MAP_SHARED), opened by SQLite with O_NOFOLLOW, and its POSIX locks on them.

Writes DIR/report (atomically) at start and on each SIGUSR1: for each connection the row count,
sum and SHA-256 of all rows in id order, and each of the process's fds and mappings on app.db*
(path, link count, size). On SIGUSR2 it inserts and commits one row through the first
connection and writes DIR/wrote: the new count and hash (the database is writable again).
"""

import hashlib
import os
import signal
import sqlite3
import sys

d = sys.argv[1]
db = os.path.join(d, "app.db")

c1 = sqlite3.connect(db, isolation_level=None)
c1.execute("PRAGMA journal_mode=WAL")
c1.execute("PRAGMA wal_autocheckpoint=0")
c1.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER NOT NULL)")


def insert(lo, hi):
    c1.execute("BEGIN")
    c1.executemany(
        "INSERT INTO t(id, v, n) VALUES (?, ?, ?)",
        ((i, f"row-{i}-" + "x" * (i % 97), (i * 7919) % 100003) for i in range(lo, hi)),
    )
    c1.execute("COMMIT")


insert(0, 10000)
c1.execute("PRAGMA wal_checkpoint(TRUNCATE)")
insert(10000, 15000)
c2 = sqlite3.connect(db, isolation_level=None)
c2.execute("BEGIN")
c2.execute("SELECT count(*) FROM t").fetchone()  # the read transaction's snapshot starts here
insert(15000, 20000)
for suffix in ("", "-wal", "-shm"):
    os.unlink(db + suffix)


def state(conn):
    h = hashlib.sha256()
    n = s = 0
    for row in conn.execute("SELECT id, v, n FROM t ORDER BY id"):
        h.update(repr(row).encode())
        n += 1
        s += row[2]
    return f"count={n} sum={s} sha256={h.hexdigest()}"


def files():
    out = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            p = os.readlink(f"/proc/self/fd/{fd}")
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "app.db" in p:
            out.append(f"FD path={p} nlink={st.st_nlink} size={st.st_size}")
    with open("/proc/self/maps") as m:
        for ln in m:
            if "app.db" in ln:
                parts = ln.split(None, 5)
                out.append(f"MAP perms={parts[1]} path={parts[5].strip()}")
    return out


def write_atomic(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))


def report():
    lines = [f"WRITER {state(c1)}", f"READER {state(c2)}"] + files()
    write_atomic("report", "\n".join(lines) + "\n")


def write_one():
    c1.execute("INSERT INTO t(id, v, n) VALUES (?, ?, ?)", (1000000, "after restart", 42))
    write_atomic("wrote", f"WROTE {state(c1)}\n")


todo = []
signal.signal(signal.SIGUSR1, lambda s, f: todo.append(report))
signal.signal(signal.SIGUSR2, lambda s, f: todo.append(write_one))
report()
while True:
    signal.pause()
    while todo:
        todo.pop(0)()
