/* many DIR NPROC NFILES [BYTES]: a process tree for the benchmarks.
 *
 * The parent becomes a session leader (CRIU wants one), then forks NPROC-1 children; every
 * process (parent included) holds NFILES unlinked files in DIR: even-numbered ones are
 * orphans (created, BYTES of data written, unlinked: nlink == 0), odd-numbered ones are
 * "name-gone" files (created, hard-linked as DIR/keep/<pid>-<n>, the opened name unlinked:
 * nlink == 1). Default BYTES = 65536. When all are set up the parent prints
 * "ready pid=<pid> procs=<n> files=<n>" and everyone sleeps until killed. Children die with
 * the parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static void hold_files(const char *dir, int nfiles, size_t bytes) {
    static char buf[65536];
    memset(buf, 'a' + getpid() % 26, sizeof buf);
    for (int i = 0; i < nfiles; i++) {
        char p[4096], k[4096];
        snprintf(p, sizeof p, "%s/f-%d-%d", dir, getpid(), i);
        int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
        if (fd < 0) die(p);
        for (size_t off = 0; off < bytes;) {
            size_t n = bytes - off < sizeof buf ? bytes - off : sizeof buf;
            if (pwrite(fd, buf, n, off) != (ssize_t)n) die("pwrite");
            off += n;
        }
        if (i % 2) {
            snprintf(k, sizeof k, "%s/keep/%d-%d", dir, getpid(), i);
            if (link(p, k) < 0) die("link");
        }
        if (unlink(p) < 0) die("unlink");
        lseek(fd, i, SEEK_SET);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: many DIR NPROC NFILES [BYTES]\n"); return 2; }
    const char *dir = argv[1];
    int nproc = atoi(argv[2]), nfiles = atoi(argv[3]);
    size_t bytes = argc > 4 ? strtoull(argv[4], NULL, 0) : 65536;
    if (getpid() != getsid(0) && setsid() < 0) die("setsid");
    char keep[4096];
    snprintf(keep, sizeof keep, "%s/keep", dir);
    mkdir(keep, 0755);
    int ready[2];
    if (pipe(ready) < 0) die("pipe");
    pid_t parent = getpid();
    for (int c = 1; c < nproc; c++) {
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            close(ready[0]);
            hold_files(dir, nfiles, bytes);
            if (write(ready[1], "r", 1) != 1) _exit(1);
            close(ready[1]);
            for (;;) pause();
        }
    }
    close(ready[1]);
    hold_files(dir, nfiles, bytes);
    char b;
    for (int c = 1; c < nproc; c++)
        if (read(ready[0], &b, 1) != 1) { fprintf(stderr, "a child failed\n"); return 1; }
    close(ready[0]);
    printf("ready pid=%d procs=%d files=%d\n", getpid(), nproc, nproc * nfiles);
    fflush(stdout);
    for (;;) pause();
}
