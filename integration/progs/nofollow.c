/* nofollow: a workload holding unlinked files opened the way Python's tempfile and SQLite
 * open them (O_NOFOLLOW), for the CRIU image-rewrite proof (integration/criu-image-proof.sh).
 *
 *   nofollow DIR [plain]
 *
 * In DIR it sets up (with "plain": the same without O_NOFOLLOW):
 *   fd 3  tmpXXXXXX   O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC (mkstemp as Python does it),
 *                     100000 bytes, pos 12345, unlinked: an orphan (nlink 0)
 *   fd 4  (same inode) a second open of fd 3 through /proc/self/fd, O_RDONLY|O_APPEND, pos 777
 *   fd 5  journal     O_WRONLY|O_CREAT|O_APPEND|O_NOFOLLOW, linked as journal.other, then
 *                     journal unlinked: name gone, nlink 1
 *   map   an O_TMPFILE file of 8192 bytes mapped MAP_SHARED rw, its fd closed
 *   cwd   DIR/gone, removed
 * prints "PID <pid>", a report, "ready", then on each SIGUSR1 the report again.
 *
 * Report lines (what a restore must give back):
 *   FD <n> path=<readlink> getfl=<octal> fdinfo_flags=<octal> pos=<n> nlink=<n> size=<n> mode=<octal> hash=<hex>
 *   MAP perms=<rwxp> path=<maps path> map_files=<readlink> nlink=<n> hash=<hex>
 *   CWD readlink=<readlink> getcwd=<result or errno name>
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
#include <sys/stat.h>
#include <unistd.h>

#define MAP_LEN 8192

static char *map;
static volatile sig_atomic_t want;

static void die(const char *what) { perror(what); exit(1); }
static void on_usr1(int s) { (void)s; want = 1; }

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}

static void fill(int fd, size_t n, int seed) {
    char buf[4096];
    for (size_t off = 0; off < n;) {
        size_t k = n - off < sizeof buf ? n - off : sizeof buf;
        for (size_t i = 0; i < k; i++) buf[i] = (char)('a' + (off + i + seed) % 26);
        if (write(fd, buf, k) != (ssize_t)k) die("write");
        off += k;
    }
}

static void fdinfo(int fd, char *flags, char *pos) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    strcpy(flags, "?");
    strcpy(pos, "?");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "flags:", 6)) strcpy(flags, line + 6 + strspn(line + 6, " \t"));
        if (!strncmp(line, "pos:", 4)) strcpy(pos, line + 4 + strspn(line + 4, " \t"));
    }
    fclose(f);
}

static void report(void) {
    char p[128], l[4096];
    for (int fd = 3; fd < 64; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(p, l, sizeof l - 1);
        l[n < 0 ? 0 : n] = 0;
        char fl[64], pos[64];
        fdinfo(fd, fl, pos);
        struct stat st;
        if (fstat(fd, &st)) die("fstat");
        uint64_t h = 1469598103934665603ULL;
        int rfd = open(p, O_RDONLY); /* a read-only reopen: fd 5 is write-only */
        if (rfd >= 0 && S_ISREG(st.st_mode)) {
            unsigned char buf[65536];
            ssize_t k;
            off_t off = 0;
            while ((k = pread(rfd, buf, sizeof buf, off)) > 0) { h = fnv(h, buf, (size_t)k); off += k; }
        }
        if (rfd >= 0) close(rfd);
        printf("FD %d path=%s getfl=0%o fdinfo_flags=%s pos=%s nlink=%lu size=%lld mode=0%o hash=%016llx\n",
               fd, l, fcntl(fd, F_GETFL), fl, pos, (unsigned long)st.st_nlink, (long long)st.st_size,
               st.st_mode, (unsigned long long)h);
    }

    FILE *m = fopen("/proc/self/maps", "r");
    if (!m) die("maps");
    while (fgets(l, sizeof l, m)) {
        unsigned long a, b;
        char perms[8];
        int off = 0;
        if (sscanf(l, "%lx-%lx %7s %*s %*s %*s %n", &a, &b, perms, &off) < 3) continue;
        if (a != (unsigned long)map) continue;
        l[strcspn(l, "\n")] = 0;
        char mf[128], tgt[4096];
        snprintf(mf, sizeof mf, "/proc/self/map_files/%lx-%lx", a, b);
        ssize_t n = readlink(mf, tgt, sizeof tgt - 1);
        tgt[n < 0 ? 0 : n] = 0;
        struct stat st;
        int s = stat(mf, &st);
        printf("MAP perms=%s path=%s map_files=%s nlink=%ld hash=%016llx\n", perms, l + off, tgt,
               s ? -1L : (long)st.st_nlink,
               (unsigned long long)fnv(1469598103934665603ULL, (unsigned char *)map, MAP_LEN));
    }
    fclose(m);

    ssize_t n = readlink("/proc/self/cwd", l, sizeof l - 1);
    l[n < 0 ? 0 : n] = 0;
    char cwd[4096];
    const char *g = getcwd(cwd, sizeof cwd) ? cwd : strerrorname_np(errno);
    printf("CWD readlink=%s getcwd=%s\n", l, g);
    printf("END\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: nofollow DIR [plain]\n"); return 2; }
    int nf = (argc > 2 && !strcmp(argv[2], "plain")) ? 0 : O_NOFOLLOW;
    closefrom(3); /* whatever the starter leaked (CRIU could not restore its pipes) */
    if (chdir(argv[1])) die("chdir");

    char tmpl[] = "tmpXXXXXX";
    int fd3 = mkostemp(tmpl, O_CLOEXEC); /* mkostemp: O_RDWR|O_CREAT|O_EXCL */
    if (fd3 < 0) die("mkostemp");
    if (nf) { /* reopen with Python's exact flags, O_NOFOLLOW among them */
        int f = open(tmpl, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (f < 0) die("open tmp");
        if (dup3(f, fd3, O_CLOEXEC) < 0) die("dup3");
        close(f);
    }
    fill(fd3, 100000, 0);
    if (lseek(fd3, 12345, SEEK_SET) < 0) die("lseek");
    if (unlink(tmpl)) die("unlink tmp");

    int fd4 = open("/proc/self/fd/3", O_RDONLY | O_APPEND);
    if (fd4 != 4) die("reopen fd 3");
    if (lseek(fd4, 777, SEEK_SET) < 0) die("lseek 4");

    int fd5 = open("journal", O_WRONLY | O_CREAT | O_APPEND | nf, 0640);
    if (fd5 != 5) die("journal");
    if (write(fd5, "journal line\n", 13) != 13) die("write journal");
    if (link("journal", "journal.other") || unlink("journal")) die("journal links");

    int t = open(".", O_TMPFILE | O_RDWR, 0604);
    if (t < 0) die("O_TMPFILE");
    fill(t, MAP_LEN, 7);
    map = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, t, 0);
    if (map == MAP_FAILED) die("mmap");
    close(t);

    if (mkdir("gone", 0751) || chdir("gone")) die("gone");
    char gone[4096];
    snprintf(gone, sizeof gone, "%s/gone", argv[1]);
    if (rmdir(gone)) die("rmdir");

    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    signal(SIGUSR1, on_usr1);
    printf("PID %d\n", getpid());
    report();
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        while (!want) sigsuspend(&old);
        want = 0;
        report();
    }
}
