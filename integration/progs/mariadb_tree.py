"""mariadb_tree: the root of a process tree holding a MariaDB server and two clients with work
in flight, for the application tests (integration/tests/apps.rs).

    python3 mariadb_tree.py PREFIX PORT

Starts `mariadbd` (datadir PREFIX/data, tmpdir PREFIX/tmp, socket PREFIX/mysqld.sock, TCP on
127.0.0.1:PORT, logs in PREFIX) as its child, with what CRIU needs: no io_uring or native AIO
(`--innodb-use-native-aio=0`). Writes PREFIX/server.ready once the server answers.
On SIGUSR1 it starts two `mariadb` clients (its children too, connected by the unix socket:
both ends of each connection are in the tree), each reading SQL from a pipe of the root's and
writing its output to a file under PREFIX:
  * tx  (PREFIX/tx.out):  BEGIN, an INSERT into appdb.t2, `SELECT 'tx-open', COUNT(*)`; the
    transaction stays open;
  * big (PREFIX/big.out): a session with small sort and in-memory temp table limits, then the
    big query of PREFIX/big.sql (a cross join materialized and sorted: temp files in tmpdir);
and writes PREFIX/clients.state ("tx=PID big=PID").
On SIGUSR2 it sends `COMMIT; SELECT 'tx-committed', COUNT(*) FROM appdb.t2;` to tx.
Repeated signals are harmless. It stays until killed (its children are reaped by whoever\nreaps it: the tree is killed as a whole).
"""

import os
import signal
import subprocess
import sys
import time

prefix, port = sys.argv[1], sys.argv[2]
sock = os.path.join(prefix, "mysqld.sock")
os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)

server = subprocess.Popen(
    [
        "/usr/sbin/mariadbd",
        "--no-defaults",
        "--user=root",
        f"--datadir={prefix}/data",
        f"--tmpdir={prefix}/tmp",
        f"--socket={sock}",
        f"--pid-file={prefix}/mariadbd.pid",
        f"--log-error={prefix}/error.log",
        "--bind-address=127.0.0.1",
        f"--port={port}",
        "--skip-grant-tables",
        "--skip-name-resolve",
        "--innodb-use-native-aio=0",
        "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=16M",
        "--performance-schema=OFF",
        "--skip-log-bin",
        "--max-connections=20",
    ],
    stdin=subprocess.DEVNULL,
)

client = ["/usr/bin/mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-N", "-B", "--unbuffered"]
for _ in range(600):
    r = subprocess.run(client + ["-e", "SELECT 1"], capture_output=True)
    if r.returncode == 0:
        break
    time.sleep(0.1)
with open(os.path.join(prefix, "server.ready.tmp"), "w") as f:
    f.write(f"pid={server.pid}\n")
os.rename(os.path.join(prefix, "server.ready.tmp"), os.path.join(prefix, "server.ready"))

todo = []


def on_signal(what):
    def handler(_s, _f):
        todo.append(what)

    return handler


signal.signal(signal.SIGUSR1, on_signal("start"))
signal.signal(signal.SIGUSR2, on_signal("commit"))
clients = {}
committed = []


def start(name):
    out = open(os.path.join(prefix, f"{name}.out"), "w")
    p = subprocess.Popen(client + ["appdb"], stdin=subprocess.PIPE, stdout=out, stderr=out)
    out.close()
    clients[name] = p
    return p


def send(name, sql):
    clients[name].stdin.write(sql.encode())
    clients[name].stdin.flush()


while True:
    while todo:
        what = todo.pop(0)
        if what == "start" and not clients:
            start("tx")
            start("big")
            send("tx", "BEGIN;\nINSERT INTO t2 (id, note) VALUES (1000001, 'uncommitted a'), "
                       "(1000002, 'uncommitted b');\nSELECT 'tx-open', COUNT(*) FROM t2;\n")
            with open(os.path.join(prefix, "big.sql")) as f:
                send("big", "SET SESSION sort_buffer_size=65536, tmp_table_size=1048576, "
                            "max_heap_table_size=1048576;\n" + f.read().strip() + "\n")
            with open(os.path.join(prefix, "clients.state.tmp"), "w") as f:
                f.write(f"tx={clients['tx'].pid} big={clients['big'].pid}\n")
            os.rename(os.path.join(prefix, "clients.state.tmp"), os.path.join(prefix, "clients.state"))
        elif what == "commit" and "tx" in clients and not committed:
            committed.append(1)
            send("tx", "COMMIT;\nSELECT 'tx-committed', COUNT(*) FROM t2;\n")
    signal.pause()  # a signal that comes just before is taken with the next one: the test repeats
