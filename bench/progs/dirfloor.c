/* What the filesystem costs for the work a take must do while frozen, without snapckpt:
 *
 *   dirfloor MNT N BYTES THREADS [dirty]
 *
 * In MNT (the root of a btrfs), N orphans of BYTES (written, held open and unlinked; synced
 * first unless "dirty": the state snapckpt's write-back leaves before the freeze, or not)
 * to clone and N files with a second name to link; then, each step timed on THREADS threads:
 *   clone   N x (O_TMPFILE in MNT/ck, FICLONE from an open file, futimens, linkat into MNT/ck)
 *   link    N x linkat of a file into MNT/ck
 *   commit  one read-only snapshot of MNT (BTRFS_IOC_SNAP_CREATE_V2: its transaction commit,
 *           and the removal of the orphans from the new snapshot, which btrfs does in it)
 *   unlink  N x unlinkat of the linked names
 * Prints "clone_ms,link_ms,commit_ms,unlink_ms". The snapshot is left at MNT/snap.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/btrfs.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int n, ck, *srcs;
static char mnt[4096];
static atomic_int next_i;
static int step;

static void die(const char *what) { perror(what); exit(1); }

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void one(int i) {
    char name[64], src[4200];
    if (step == 0) {
        int t = openat(ck, ".", O_TMPFILE | O_RDWR, 0644);
        if (t < 0) die("O_TMPFILE");
        if (ioctl(t, FICLONE, srcs[i]) < 0) die("FICLONE");
        struct timespec ts[2] = {{1, 1}, {1, 1}};
        if (futimens(t, ts) < 0) die("futimens");
        snprintf(src, sizeof src, "/proc/self/fd/%d", t);
        snprintf(name, sizeof name, "c-%d", i);
        if (linkat(AT_FDCWD, src, ck, name, AT_SYMLINK_FOLLOW) < 0) die("linkat clone");
        close(t);
    } else if (step == 1) {
        snprintf(src, sizeof src, "%s/other/gone-%d", mnt, i);
        snprintf(name, sizeof name, "l-%d", i);
        if (linkat(AT_FDCWD, src, ck, name, 0) < 0) die("linkat");
    } else {
        snprintf(name, sizeof name, "l-%d", i);
        if (unlinkat(ck, name, 0) < 0) die("unlinkat");
    }
}

static void *worker(void *arg) {
    (void)arg;
    for (int i; (i = atomic_fetch_add(&next_i, 1)) < n;)
        one(i);
    return NULL;
}

static double timed(int s, int threads) {
    pthread_t th[16];
    step = s;
    atomic_store(&next_i, 0);
    double t = now_ms();
    for (int k = 1; k < threads; k++)
        pthread_create(&th[k], NULL, worker, NULL);
    worker(NULL);
    for (int k = 1; k < threads; k++)
        pthread_join(th[k], NULL);
    return now_ms() - t;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: dirfloor MNT N BYTES THREADS [dirty]\n");
        return 2;
    }
    snprintf(mnt, sizeof mnt, "%s", argv[1]);
    n = atoi(argv[2]);
    long bytes = atol(argv[3]);
    int threads = atoi(argv[4]);
    if (threads < 1 || threads > 16) threads = 1;
    char p[4200];
    const char *dirs[] = {"src", "other", "ck"};
    for (int d = 0; d < 3; d++) {
        snprintf(p, sizeof p, "%s/%s", mnt, dirs[d]);
        if (mkdir(p, 0755) < 0) die("mkdir");
    }
    char *data = malloc(bytes);
    for (long k = 0; k < bytes; k++) data[k] = (char)(k * 7 + 3);
    srcs = calloc(n, sizeof *srcs);
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/src/orphan-%d", mnt, i);
        int f = open(p, O_CREAT | O_RDWR | O_TRUNC, 0644);
        if (f < 0 || write(f, data, bytes) != bytes) die("write");
        srcs[i] = f;
        if (unlink(p) < 0) die("unlink"); /* an orphan, as the tasks' are */
        char q[4200];
        snprintf(p, sizeof p, "%s/src/gone-%d", mnt, i);
        int g = open(p, O_CREAT | O_WRONLY, 0644);
        if (g < 0) die("create");
        close(g);
        snprintf(q, sizeof q, "%s/other/gone-%d", mnt, i);
        if (link(p, q) < 0) die("link");
    }
    if (argc == 5) sync();
    snprintf(p, sizeof p, "%s/ck", mnt);
    ck = open(p, O_RDONLY | O_DIRECTORY);
    int root = open(mnt, O_RDONLY | O_DIRECTORY);
    if (ck < 0 || root < 0) die("open dir");
    double c = timed(0, threads), l = timed(1, threads);
    struct btrfs_ioctl_vol_args_v2 a;
    memset(&a, 0, sizeof a);
    a.fd = root;
    a.flags = BTRFS_SUBVOL_RDONLY;
    snprintf(a.name, sizeof a.name, "snap");
    double t = now_ms();
    if (ioctl(root, BTRFS_IOC_SNAP_CREATE_V2, &a) < 0) die("BTRFS_IOC_SNAP_CREATE_V2");
    double m = now_ms() - t;
    double u = timed(2, threads);
    printf("%.1f,%.1f,%.1f,%.1f\n", c, l, m, u);
    return 0;
}
