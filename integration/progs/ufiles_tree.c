/* ufiles_tree DIR: a parent and a child sharing one orphan (inherited fd) and the child
 * holding a second open file description of it. Prints "ready" once both are set up.
 * On SIGUSR1 each process prints "CHECK <pid> pos=<n> nlink=<n> size=<n> data=<first bytes>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t want;
static void on(int s) { (void)s; want = 1; }

static void check(int fd) {
    struct stat st;
    char buf[16] = {0};
    fstat(fd, &st);
    pread(fd, buf, 10, 0);
    printf("CHECK %d pos=%lld nlink=%lu size=%lld data=%s\n", getpid(), (long long)lseek(fd, 0, SEEK_CUR),
           (unsigned long)st.st_nlink, (long long)st.st_size, buf);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    char p[4096];
    snprintf(p, sizeof p, "%s/shared", argv[1]);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "shared-data-0123456789", 22) != 22 || unlink(p) < 0) { perror("setup"); return 1; }
    lseek(fd, 5, SEEK_SET);
    signal(SIGUSR1, on);
    int ready[2];
    if (pipe(ready) < 0) return 1;
    pid_t c = fork();
    if (c == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test's parent process */
        char q[64];
        snprintf(q, sizeof q, "/proc/self/fd/%d", fd);
        int own = open(q, O_RDONLY);
        lseek(own, 11, SEEK_SET);
        close(ready[0]);
        write(ready[1], "r", 1);
        close(ready[1]);
        for (;;) { pause(); if (want) { want = 0; check(fd); check(own); } }
    }
    char b;
    close(ready[1]);
    read(ready[0], &b, 1);
    close(ready[0]);
    printf("ready pid=%d child=%d\n", getpid(), c);
    fflush(stdout);
    for (;;) { pause(); if (want) { want = 0; check(fd); } }
}
