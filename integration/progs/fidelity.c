/* fidelity: a workload that holds one unlinked object of every kind and flag, and reports
 * everything a restarted task could compare: what it reads back from /proc/self/fd, its
 * maps and getcwd, link counts, sizes, offsets, inode numbers, F_GETFL and fdinfo flags.
 *
 *   fidelity DIR [linked-only]   set up in DIR, print the report, "ready", then wait:
 *                                SIGUSR1 prints the report again followed by "checked".
 *
 * With "linked-only" it holds nothing unlinked: a cwd in DIR and a linked log it appends to.
 *
 * Report lines (stable; the tests compare them before and after a restart):
 *   FD <n> path=<readlink> getfl=<octal> fdflags=<octal> pos=<n> nlink=<n> size=<n> ino=<n> hash=<hex>
 *   MAP path=<maps path> perms=<rwxp> hash=<hex>
 *   CWD path=<readlink /proc/self/cwd> getcwd=<result or errno name>
 *   SOCK path=<getsockname>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t want_report;
static void *map_addr;
static size_t map_len;
static int sock_fd = -1;

static void die(const char *what) { perror(what); exit(1); }

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* A file of `len` bytes of a pattern, opened with `flags`, then handled by `how`:
 * 'u' unlink (nlink 0), 'n' name gone but another link kept, 'k' kept linked. */
static int make(const char *dir, const char *name, size_t len, int flags, char how, off_t pos) {
    char p[4096], q[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int w = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0640);
    if (w < 0) die(p);
    char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)('a' + (i * 7 + len) % 26);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof buf ? len - done : sizeof buf;
        if (write(w, buf, n) != (ssize_t)n) die("write");
        done += n;
    }
    fsync(w);
    close(w);
    int fd = open(p, flags);
    if (fd < 0) die(p);
    if (pos && !(flags & O_PATH)) lseek(fd, pos, SEEK_SET);
    if (how == 'n') {
        snprintf(q, sizeof q, "%s/.keep-%s", dir, name);
        if (link(p, q)) die("link");
    }
    if (how != 'k' && unlink(p)) die("unlink");
    return fd;
}

static void report(void) {
    char link[64], path[4096], info[4096];
    for (int fd = 3; fd < 64; fd++) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n < 0) continue;
        path[n] = 0;
        if (fd == sock_fd) continue; /* reported as SOCK */
        int getfl = fcntl(fd, F_GETFL);
        snprintf(link, sizeof link, "/proc/self/fdinfo/%d", fd);
        FILE *f = fopen(link, "r");
        unsigned long long pos = 0;
        unsigned int fdflags = 0;
        if (f) {
            while (fgets(info, sizeof info, f)) {
                sscanf(info, "pos: %llu", &pos);
                sscanf(info, "flags: %o", &fdflags);
            }
            fclose(f);
        }
        struct stat st;
        if (fstat(fd, &st)) continue;
        uint64_t h = 0xcbf29ce484222325ULL;
        if (S_ISREG(st.st_mode) && !(getfl & O_PATH)) {
            unsigned char b[65536];
            ssize_t r;
            off_t off = 0;
            while ((r = pread(fd, b, sizeof b, off)) > 0) { h = fnv(b, (size_t)r, h); off += r; }
        }
        printf("FD %d path=%s getfl=%o fdflags=%o pos=%llu nlink=%lu size=%lld ino=%lu hash=%016llx\n", fd, path,
               getfl, fdflags, pos, (unsigned long)st.st_nlink, (long long)st.st_size, (unsigned long)st.st_ino,
               (unsigned long long)h);
    }
    FILE *m = fopen("/proc/self/maps", "r");
    while (m && fgets(info, sizeof info, m)) {
        char perms[8] = "", mp[4096] = "";
        unsigned long a, b;
        if (sscanf(info, "%lx-%lx %7s %*s %*s %*s %4095[^\n]", &a, &b, perms, mp) == 4 && strstr(mp, "mapped")) {
            uint64_t h = fnv((const unsigned char *)map_addr, map_len, 0xcbf29ce484222325ULL);
            printf("MAP path=%s perms=%s hash=%016llx\n", mp, perms, (unsigned long long)h);
        }
    }
    if (m) fclose(m);
    ssize_t n = readlink("/proc/self/cwd", path, sizeof path - 1);
    path[n < 0 ? 0 : n] = 0;
    char cwd[4096];
    const char *g = getcwd(cwd, sizeof cwd) ? cwd : strerrorname_np(errno);
    printf("CWD path=%s getcwd=%s\n", path, g);
    if (sock_fd >= 0) {
        struct sockaddr_un sa;
        socklen_t l = sizeof sa;
        memset(&sa, 0, sizeof sa);
        getsockname(sock_fd, (struct sockaddr *)&sa, &l);
        printf("SOCK path=%s\n", sa.sun_path);
    }
    fflush(stdout);
}

static void on_sig(int s) { (void)s; want_report = 1; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: fidelity DIR [linked-only]\n"); return 2; }
    const char *d = argv[1];
    int linked_only = argc > 2 && !strcmp(argv[2], "linked-only");
    char p[4096];
    if (linked_only) {
        snprintf(p, sizeof p, "%s/work", d);
        mkdir(p, 0755);
        if (chdir(p)) die("chdir");
        make(d, "linked.log", 3000, O_WRONLY | O_APPEND, 'k', 0);
        make(d, "linked.dat", 100000, O_RDWR, 'k', 4321);
    } else {
        make(d, "nofollow", 50000, O_RDWR | O_NOFOLLOW, 'u', 12345);
        make(d, "append", 30000, O_WRONLY | O_APPEND, 'n', 0);
        make(d, "noatime", 20000, O_RDONLY | O_NOATIME, 'u', 77);
        make(d, "sync", 20000, O_RDWR | O_SYNC, 'u', 100);
        make(d, "dsync", 20000, O_RDWR | O_DSYNC, 'u', 200);
        make(d, "direct", 65536, O_RDWR | O_DIRECT, 'u', 4096);
        make(d, "opath", 1000, O_PATH, 'u', 0);
        make(d, "cloexec", 1000, O_RDONLY | O_CLOEXEC, 'u', 10);
        /* an unlinked symlink held O_PATH|O_NOFOLLOW */
        snprintf(p, sizeof p, "%s/symlink", d);
        if (symlink("target-of-the-link", p)) die("symlink");
        if (open(p, O_PATH | O_NOFOLLOW) < 0) die("open symlink");
        unlink(p);
        /* FIFOs: read-write, then read-only and write-only (a writer and reader exist) */
        snprintf(p, sizeof p, "%s/fifo", d);
        if (mkfifo(p, 0600)) die("mkfifo");
        if (open(p, O_RDWR | O_NONBLOCK) < 0) die("fifo rw");
        if (open(p, O_RDONLY | O_NONBLOCK) < 0) die("fifo r");
        if (open(p, O_WRONLY | O_NONBLOCK) < 0) die("fifo w");
        unlink(p);
        /* a device node (like /dev/null) */
        snprintf(p, sizeof p, "%s/null", d);
        if (mknod(p, S_IFCHR | 0600, makedev(1, 3))) die("mknod");
        if (open(p, O_RDWR) < 0) die("open null");
        unlink(p);
        /* a mapped unlinked file, its fd closed */
        map_len = 8192;
        int mfd = make(d, "mapped", map_len, O_RDWR, 'u', 0);
        map_addr = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        if (map_addr == MAP_FAILED) die("mmap");
        close(mfd);
        /* a unix socket bound to a path that is then removed */
        snprintf(p, sizeof p, "%s/sock", d);
        sock_fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", p);
        if (bind(sock_fd, (struct sockaddr *)&sa, sizeof sa) || listen(sock_fd, 4)) die("bind");
        unlink(p);
        /* a removed cwd */
        snprintf(p, sizeof p, "%s/gone", d);
        if (mkdir(p, 0750) || chdir(p) || rmdir(p)) die("cwd");
    }
    report();
    printf("ready\n");
    fflush(stdout);
    signal(SIGUSR1, on_sig);
    for (;;) {
        pause();
        if (want_report) {
            want_report = 0;
            report();
            printf("checked\n");
            fflush(stdout);
        }
    }
}
