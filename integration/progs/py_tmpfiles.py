"""py_tmpfiles: a Python program holding the unlinked files Python's `tempfile` and `mmap` make,
for the application tests (integration/tests/apps.rs).

    python3 py_tmpfiles.py DIR

In DIR (on the filesystem under test) it makes
  * a `tempfile.TemporaryFile` (O_TMPFILE on Linux: never linked), 3 MiB written, offset 1234567;
  * a `tempfile.NamedTemporaryFile(delete=False)` (mkstemp: O_NOFOLLOW), 2 MiB + 7 written,
    offset 99, then its name unlinked (an orphan, nlink 0);
  * a file of 1 MiB mapped MAP_SHARED read-write, its name unlinked (Python's mmap keeps a dup of
    the fd; the file object is closed), a few bytes changed through the mapping;
  * `journal`, a linked file it appended 3 lines to and keeps open (O_APPEND).
Then it writes DIR/report (atomically: report.tmp, rename) and, on each SIGUSR1, writes it again.
The report says what a restore must give back: per fd its path (readlink), flags, offset, link
count, size, mode and the SHA-256 of its content (read with pread: offsets untouched); the
mapping's /proc/self/maps line and content hash; the journal's content hash. Its stdout and
stderr are not used (the test gives it /dev/null).
"""

import hashlib
import mmap
import os
import signal
import sys
import tempfile

d = sys.argv[1]
os.chdir(d)


def pattern(n, seed):
    block = bytes((i * 7 + seed) % 251 for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


tf = tempfile.TemporaryFile(dir=d)
tf.write(pattern(3 << 20, 1))
tf.flush()
tf.seek(1234567)

ntf = tempfile.NamedTemporaryFile(dir=d, prefix="named-", delete=False)
ntf.write(pattern((2 << 20) + 7, 2))
ntf.flush()
ntf.seek(99)
os.unlink(ntf.name)

mpath = os.path.join(d, "mapped.bin")
with open(mpath, "w+b") as f:
    f.write(pattern(1 << 20, 3))
    f.flush()
    mm = mmap.mmap(f.fileno(), 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.unlink(mpath)
mm[4096:4101] = b"HELLO"

journal = open(os.path.join(d, "journal"), "a+")
for i in range(3):
    journal.write(f"line {i}\n")
journal.flush()


def fd_line(name, fd):
    st = os.fstat(fd)
    h = hashlib.sha256()
    off = 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            break
        h.update(b)
        off += len(b)
    flags = "?"
    with open(f"/proc/self/fdinfo/{fd}") as fi:
        for line in fi:
            if line.startswith("flags:"):
                flags = line.split()[1]
    return (
        f"FD {name} path={os.readlink(f'/proc/self/fd/{fd}')} flags={flags} "
        f"pos={os.lseek(fd, 0, os.SEEK_CUR)} nlink={st.st_nlink} size={st.st_size} "
        f"mode={st.st_mode:o} sha256={h.hexdigest()}"
    )


def report():
    lines = [
        fd_line("temporaryfile", tf.fileno()),
        fd_line("namedtemporaryfile", ntf.fileno()),
        fd_line("journal", journal.fileno()),
    ]
    with open("/proc/self/maps") as m:
        maps = [ln.split(None, 5) for ln in m if "mapped.bin" in ln]
    for parts in maps:
        lines.append(f"MAP perms={parts[1]} size={mm.size()} path={parts[5].strip()}")
    lines.append(f"MAPDATA sha256={hashlib.sha256(mm[:]).hexdigest()}")
    lines.append(f"CWD {os.readlink('/proc/self/cwd')}")
    with open(os.path.join(d, "report.tmp"), "w") as r:
        r.write("\n".join(lines) + "\n")
    os.rename(os.path.join(d, "report.tmp"), os.path.join(d, "report"))


want = False


def on_usr1(_s, _f):
    global want
    want = True


signal.signal(signal.SIGUSR1, on_usr1)
report()
while True:
    signal.pause()
    if want:
        want = False
        report()
