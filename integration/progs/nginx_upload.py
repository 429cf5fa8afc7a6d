"""nginx_upload: the root of a process tree holding an nginx (master and one worker) with an
upload in progress, for the application tests (integration/tests/apps.rs).

    python3 nginx_upload.py PREFIX PORT [noclient]

Writes PREFIX/nginx.conf and starts `nginx -p PREFIX -c nginx.conf` (daemon off) as its child:
  * front server on 127.0.0.1:PORT and unix:PREFIX/front.sock: /upload/NAME is proxied (the
    request body buffered first, in an *unlinked* temp file under PREFIX/client_temp) to
  * back server on unix:PREFIX/back.sock, which stores it with WebDAV PUT as PREFIX/www/files/NAME;
  * /files/NAME served from PREFIX/www (static files, and the uploads).
Then it forks the upload client (also in the tree: its connection is a unix socket to
front.sock, both ends in the checkpointed tree): `PUT /upload/big.bin` with a body of
BODY_LEN bytes, of which it sends SENT_FIRST, then writes PREFIX/client.state
("pid=P sent=N total=T sha256=H": H the whole body's hash) and waits. On SIGUSR1 it sends the
rest, reads the response and writes PREFIX/client.result (the status line and the response
body's SHA-256), and exits. With "noclient" there is no client in the tree (the test uploads
over TCP itself, for a checkpoint with --tcp-established). The root reaps its children and stays; nginx's output goes where the
root's goes (the test gives /dev/null), its logs to PREFIX/logs.
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

prefix, port = sys.argv[1], int(sys.argv[2])
with_client = sys.argv[3:] != ["noclient"]
BODY_LEN = 8 << 20
SENT_FIRST = 6 << 20

for sub in ("logs", "client_temp", "back_temp", "proxy_temp", "www/files", "misc_temp"):
    os.makedirs(os.path.join(prefix, sub), exist_ok=True)

conf = f"""
user root;
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/misc_temp;
    uwsgi_temp_path {prefix}/misc_temp;
    scgi_temp_path {prefix}/misc_temp;
    client_max_body_size 64m;
    client_body_buffer_size 16k;
    client_body_timeout 300s;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        listen unix:{prefix}/front.sock;
        location /upload/ {{
            proxy_request_buffering on;
            proxy_pass http://unix:{prefix}/back.sock:/files/;
        }}
        location /files/ {{ root {prefix}/www; }}
        location = /hello {{ return 200 "hello from nginx\\n"; }}
    }}
    server {{
        listen unix:{prefix}/back.sock;
        client_body_temp_path {prefix}/back_temp;
        location /files/ {{
            root {prefix}/www;
            dav_methods PUT;
        }}
    }}
}}
"""
with open(os.path.join(prefix, "nginx.conf"), "w") as f:
    f.write(conf)

nginx = subprocess.Popen(
    ["/usr/sbin/nginx", "-p", prefix, "-c", "nginx.conf", "-e", f"{prefix}/logs/error.log"],
    stdin=subprocess.DEVNULL,
)
front = os.path.join(prefix, "front.sock")
for _ in range(500):
    if os.path.exists(front) and os.path.exists(os.path.join(prefix, "back.sock")):
        break
    time.sleep(0.02)


def body(lo, hi):
    block = bytes((i * 13 + 5) % 251 for i in range(65536))
    out = bytearray()
    for off in range(lo - lo % 65536, hi, 65536):
        out += block
    start = lo % 65536
    return bytes(out[start:start + (hi - lo)])


def client():
    go = []
    signal.signal(signal.SIGUSR1, lambda s, f: go.append(1))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(front)
    s.sendall(
        f"PUT /upload/big.bin HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY_LEN}\r\n"
        f"Connection: close\r\n\r\n".encode()
    )
    for off in range(0, SENT_FIRST, 1 << 20):
        s.sendall(body(off, off + (1 << 20)))
    whole = hashlib.sha256(body(0, BODY_LEN)).hexdigest()
    with open(os.path.join(prefix, "client.state.tmp"), "w") as f:
        f.write(f"pid={os.getpid()} sent={SENT_FIRST} total={BODY_LEN} sha256={whole}\n")
    os.rename(os.path.join(prefix, "client.state.tmp"), os.path.join(prefix, "client.state"))
    while not go:
        signal.pause()
    s.sendall(body(SENT_FIRST, BODY_LEN))
    resp = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        resp += b
    head, _, rbody = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode()
    with open(os.path.join(prefix, "client.result.tmp"), "w") as f:
        f.write(f"{status}\nbody_sha256={hashlib.sha256(rbody).hexdigest()}\n")
    os.rename(os.path.join(prefix, "client.result.tmp"), os.path.join(prefix, "client.result"))
    os._exit(0)


if with_client and os.fork() == 0:
    try:
        client()
    finally:
        os._exit(1)

# the root: reap whatever ends, stay until killed
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
