/* ufiles: a test workload that holds unlinked files of every kind, and reports on them.
 *
 *   ufiles setup DIR SCENARIO...   set up the scenarios in DIR, print a report, "ready",
 *                                  then wait: SIGUSR1 prints the report again followed by
 *                                  "checked"; SIGUSR2 writes "XY" through the "ab" fd and
 *                                  prints "wrote".
 *   ufiles report                  print the report of the fds it inherited, then exit.
 *   ufiles write FD TEXT           write TEXT through FD at its offset, then exit.
 *
 * Scenarios:
 *   ab          fd = open(a); link(a, b); unlink(a); creat(a): the fd's name now names
 *               another file, the inode lives on as b (the design's starting case)
 *   orphan:N    an N-byte file with holes (data every 64 MiB), unlinked: nlink == 0
 *   dense:N     an N-byte file, all data, unlinked
 *   mmap        a shared mapping of an orphan whose fd was closed
 *   cwd         chdir into a directory, then rmdir it
 *   tmpfile     an O_TMPFILE file with data, never linked
 *   tmpfile-excl  the same opened O_TMPFILE|O_EXCL: it can never be linked
 *   locks       a linked file "locked" held twice: flock(LOCK_EX) on one fd, an OFD write
 *               lock (fcntl F_OFD_SETLK) on bytes 0-99 of the other
 *   twofds      two fds (O_RDONLY, O_WRONLY|O_APPEND) at different offsets on one orphan
 *   fifo        a FIFO opened O_RDWR, then unlinked
 *   highfd:N    an orphan at fd N (RLIMIT_NOFILE raised to N + 16)
 *   opath       a file held only through an O_PATH fd, then unlinked
 *   odd         orphans named "x (deleted)" and "new\nline name", and a LINKED file named
 *               "kept (deleted)" that must not count as unlinked
 *
 * Report lines (stable, compared by the tests):
 *   FD <n> kind=<reg|dir|fifo|other> flags=<octal> pos=<n> nlink=<n> size=<n> hash=<hex>
 *   MAP <index> len=<n> hash=<hex>
 *   CWD nlink=<n>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int ab_fd = -1;
static void *maps[8];
static size_t map_len[8];
static int nmaps;
static volatile sig_atomic_t want_report, want_write;

static void die(const char *what) { perror(what); exit(1); }

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}

static uint64_t hash_fd(int fd, off_t size) {
    static unsigned char buf[1 << 16]; /* small: the process image should hold little memory */
    uint64_t h = 1469598103934665603ULL;
    off_t off = 0;
    while (off < size) {
        /* hash only data segments but mix in their offsets, so holes count */
        off_t d = lseek(fd, off, SEEK_DATA);
        if (d < 0) break;
        off_t e = lseek(fd, d, SEEK_HOLE);
        if (e < 0 || e > size) e = size;
        h = fnv(h, (unsigned char *)&d, sizeof d);
        for (off_t o = d; o < e;) {
            size_t want = (size_t)(e - o) < sizeof buf ? (size_t)(e - o) : sizeof buf;
            ssize_t r = pread(fd, buf, want, o);
            if (r <= 0) break;
            /* all-zero blocks are treated like holes so that the result does not depend on
             * how a filesystem stores them */
            int zero = 1;
            for (ssize_t i = 0; i < r; i++) if (buf[i]) { zero = 0; break; }
            if (!zero) h = fnv(h, buf, r);
            o += r;
        }
        off = e;
    }
    return h;
}

static void report(void) {
    struct rlimit rl;
    int maxfd = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
    for (int fd = 3; fd < maxfd; fd++) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0) continue;
        struct stat st;
        if (fstat(fd, &st) < 0) continue;
        const char *kind = S_ISREG(st.st_mode) ? "reg" : S_ISDIR(st.st_mode) ? "dir" : S_ISFIFO(st.st_mode) ? "fifo" : "other";
        off_t pos = lseek(fd, 0, SEEK_CUR);
        uint64_t h = 0;
        if (S_ISREG(st.st_mode)) {
            int rfd = -1;
            char p[64];
            snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
            rfd = open(p, O_RDONLY);
            if (rfd >= 0) { h = hash_fd(rfd, st.st_size); close(rfd); }
        }
        printf("FD %d kind=%s flags=%o pos=%lld nlink=%lu size=%lld hash=%016llx\n", fd, kind,
               fl & (O_ACCMODE | O_APPEND | O_NONBLOCK | O_PATH), (long long)pos, (unsigned long)st.st_nlink,
               (long long)st.st_size, (unsigned long long)h);
    }
    for (int i = 0; i < nmaps; i++)
        printf("MAP %d len=%zu hash=%016llx\n", i, map_len[i],
               (unsigned long long)fnv(1469598103934665603ULL, maps[i], map_len[i]));
    struct stat cst;
    if (stat(".", &cst) == 0) printf("CWD nlink=%lu\n", (unsigned long)cst.st_nlink);
    fflush(stdout);
}

static void fill(int fd, off_t size, int sparse, char seed) {
    static char buf[65536];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = seed + (i % 23);
    if (sparse) {
        for (off_t o = 0; o < size; o += 64LL << 20) {
            size_t n = size - o < (off_t)sizeof buf ? (size_t)(size - o) : sizeof buf;
            if (pwrite(fd, buf, n, o) != (ssize_t)n) die("pwrite");
        }
        if (ftruncate(fd, size) < 0) die("ftruncate");
    } else {
        for (off_t o = 0; o < size;) {
            size_t n = size - o < (off_t)sizeof buf ? (size_t)(size - o) : sizeof buf;
            if (pwrite(fd, buf, n, o) != (ssize_t)n) die("pwrite");
            o += n;
        }
    }
}

static int orphan(const char *dir, const char *name, off_t size, int sparse, int flags) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (fd < 0) die(p);
    fill(fd, size, sparse, 'a' + (size % 7));
    if (unlink(p) < 0) die("unlink");
    if (flags != O_RDWR) {
        char q[64];
        snprintf(q, sizeof q, "/proc/self/fd/%d", fd);
        int f2 = open(q, flags);
        if (f2 < 0) die("reopen");
        close(fd);
        fd = f2;
    }
    return fd;
}

static void on_sig(int s) {
    if (s == SIGUSR1) want_report = 1;
    if (s == SIGUSR2) want_write = 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "report")) { report(); return 0; }
    if (argc >= 4 && !strcmp(argv[1], "write")) {
        int fd = atoi(argv[2]);
        ssize_t n = write(fd, argv[3], strlen(argv[3]));
        if (n != (ssize_t)strlen(argv[3])) die("write");
        return 0;
    }
    if (argc < 3 || strcmp(argv[1], "setup")) { fprintf(stderr, "usage: ufiles setup DIR SCENARIO...\n"); return 2; }
    const char *dir = argv[2];
    char p[4096], q[4096];
    for (int i = 3; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "ab")) {
            snprintf(p, sizeof p, "%s/a", dir);
            snprintf(q, sizeof q, "%s/b", dir);
            ab_fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
            if (ab_fd < 0) die(p);
            if (write(ab_fd, "hello", 5) != 5) die("write");
            if (link(p, q) < 0) die("link");
            if (unlink(p) < 0) die("unlink");
            int nfd = creat(p, 0644);
            if (nfd < 0 || write(nfd, "new", 3) != 3) die("creat");
            close(nfd);
            lseek(ab_fd, 3, SEEK_SET);
        } else if (!strncmp(s, "orphan:", 7) || !strncmp(s, "dense:", 6)) {
            int sparse = s[0] == 'o';
            off_t size = atoll(strchr(s, ':') + 1);
            snprintf(q, sizeof q, "%s-%lld", sparse ? "orphan" : "dense", (long long)size);
            int fd = orphan(dir, q, size, sparse, O_RDWR);
            lseek(fd, size / 3, SEEK_SET);
        } else if (!strcmp(s, "mmap")) {
            int fd = orphan(dir, "mapped", 3 * 4096 + 100, 0, O_RDWR);
            size_t len = 4 * 4096;
            void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED) die("mmap");
            memcpy(m, "mapped-changed", 14);
            close(fd);
            maps[nmaps] = m; map_len[nmaps++] = 3 * 4096 + 100;
        } else if (!strcmp(s, "cwd")) {
            snprintf(p, sizeof p, "%s/gone-dir", dir);
            if (mkdir(p, 0750) < 0 || chdir(p) < 0 || rmdir(p) < 0) die("cwd");
        } else if (!strcmp(s, "tmpfile")) {
            int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
            if (fd < 0) die("O_TMPFILE");
            fill(fd, 100000, 0, 't');
            lseek(fd, 77, SEEK_SET);
        } else if (!strcmp(s, "tmpfile-excl")) {
            /* O_EXCL: the kernel never lets it be linked (Python's TemporaryFile does this) */
            int fd = open(dir, O_TMPFILE | O_EXCL | O_RDWR, 0600);
            if (fd < 0) die("O_TMPFILE|O_EXCL");
            fill(fd, 70000, 0, 'x');
            lseek(fd, 99, SEEK_SET);
        } else if (!strcmp(s, "locks")) {
            snprintf(p, sizeof p, "%s/locked", dir);
            int a = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
            if (a < 0 || write(a, "locked", 6) != 6) die("locks");
            int b = open(p, O_RDWR);
            if (b < 0 || flock(a, LOCK_EX | LOCK_NB) < 0) die("flock");
            struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
            /* an open file description lock: a POSIX one would go with the report's close() */
            if (fcntl(b, F_OFD_SETLK, &fl) < 0) die("F_OFD_SETLK");
        } else if (!strcmp(s, "twofds")) {
            int a = orphan(dir, "two", 50000, 0, O_RDWR);
            char pp[64];
            snprintf(pp, sizeof pp, "/proc/self/fd/%d", a);
            int r = open(pp, O_RDONLY);
            int w = open(pp, O_WRONLY | O_APPEND);
            if (r < 0 || w < 0) die("twofds");
            close(a);
            lseek(r, 1234, SEEK_SET);
            lseek(w, 4321, SEEK_SET);
        } else if (!strcmp(s, "fifo")) {
            snprintf(p, sizeof p, "%s/fifo", dir);
            if (mkfifo(p, 0600) < 0) die("mkfifo");
            int fd = open(p, O_RDWR | O_NONBLOCK);
            if (fd < 0 || unlink(p) < 0) die("fifo");
        } else if (!strncmp(s, "highfd:", 7)) {
            /* an orphan at a high fd number (the fd limit raised for it) */
            int n = atoi(s + 7);
            struct rlimit rl = { (rlim_t)n + 16, (rlim_t)n + 16 };
            if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die("setrlimit");
            int fd = orphan(dir, "high", 3000, 0, O_RDWR);
            if (dup2(fd, n) < 0) die("dup2");
            close(fd);
            lseek(n, 11, SEEK_SET);
        } else if (!strcmp(s, "opath")) {
            /* a file held only through an O_PATH fd, then unlinked */
            snprintf(p, sizeof p, "%s/opath", dir);
            int w = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (w < 0 || write(w, "secret", 6) != 6) die("opath");
            close(w);
            int fd = open(p, O_PATH);
            if (fd < 0 || unlink(p) < 0) die("opath");
        } else if (!strcmp(s, "odd")) {
            orphan(dir, "x (deleted)", 1000, 0, O_RDWR);
            orphan(dir, "new\nline name", 2000, 0, O_RDWR);
            snprintf(p, sizeof p, "%s/kept (deleted)", dir);
            int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || write(fd, "kept", 4) != 4) die("kept");
        } else {
            fprintf(stderr, "unknown scenario %s\n", s);
            return 2;
        }
    }
    report();
    printf("ready pid=%d\n", getpid());
    fflush(stdout);
    signal(SIGUSR1, on_sig);
    signal(SIGUSR2, on_sig);
    for (;;) {
        pause();
        if (want_write) {
            want_write = 0;
            if (ab_fd >= 0 && write(ab_fd, "XY", 2) == 2) printf("wrote\n"); else printf("write failed\n");
            fflush(stdout);
        }
        if (want_report) {
            want_report = 0;
            report();
            printf("checked\n");
            fflush(stdout);
        }
    }
}
