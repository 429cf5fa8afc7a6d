/* pidself: a workload that reports its own pid as it sees it and a file it holds, for
 * restarts into a new pid namespace (restart --private-pids).
 *
 *   pidself DIR   writes DIR/data, holds it open read-only, makes DIR its cwd, prints
 *                 "ready", then waits: SIGUSR1 (re)writes DIR/report, a single line
 *
 *   getpid=<getpid()> self=<readlink /proc/self> status=<Pid: of /proc/self/status>
 *   held=<pread of the held fd> bypath=<DIR/data read by its path>
 *
 * and prints nothing more on stdout (a restored task's stdout is a linked file that CRIU
 * reopens at its checkpoint size: two restarts of one checkpoint must find it unchanged).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t want_report;
static void on_sig(int s) { (void)s; want_report = 1; }
static void die(const char *what) { perror(what); exit(1); }

/* The first line of `fd` from offset 0, without its newline. */
static void first_line(int fd, char *buf, size_t n) {
    ssize_t r = pread(fd, buf, n - 1, 0);
    buf[r > 0 ? r : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
}

static void status_pid(char *buf, size_t n) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    snprintf(buf, n, "?");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Pid:", 4)) {
            snprintf(buf, n, "%ld", strtol(line + 4, NULL, 10));
            break;
        }
    if (f) fclose(f);
}

static void report(const char *dir, int held) {
    char self[64] = "", status[32], h[256], p[256], path[4096];
    ssize_t n = readlink("/proc/self", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    status_pid(status, sizeof status);
    first_line(held, h, sizeof h);
    snprintf(path, sizeof path, "%s/data", dir);
    int fd = open(path, O_RDONLY);
    snprintf(p, sizeof p, "(open failed)");
    if (fd >= 0) { first_line(fd, p, sizeof p); close(fd); }
    FILE *out = fopen("report.tmp", "w");
    if (!out) die("report.tmp");
    fprintf(out, "getpid=%d self=%s status=%s held=%s bypath=%s\n", getpid(), self, status, h, p);
    fclose(out);
    if (rename("report.tmp", "report")) die("rename report");
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: pidself DIR\n"); return 2; }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/data", dir);
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f, "data at the checkpoint\n");
    fclose(f);
    int held = open(path, O_RDONLY);
    if (held < 0) die(path);
    if (chdir(dir)) die(dir);
    signal(SIGUSR1, on_sig);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        pause();
        if (want_report) { want_report = 0; report(dir, held); }
    }
}
