// Test program for kmod/snapckpt_relink (the /dev/snapckpt-relink ioctl), run in the QEMU
// guest by integration/vm/kmod-guest/test.sh. Static, no dependencies: cc -static -I kmod.
//
//   relinktest hold DIR DENSE_MIB SPARSE_MIB
//       makes DIR/{dense,sparse,victim,namegone,namegone2} (dense: DENSE_MIB of a known
//       pattern; sparse: SPARSE_MIB apparent, 1 MiB of data at 0, at the middle and at the end;
//       victim: 1 MiB), fsyncs them, unlinks all but namegone2, keeps them open as fds
//       10 (dense) 11 (sparse) 12 (victim) 13 (namegone, nlink 1), prints "ready PID", waits
//       for SIGTERM.
//   relinktest link [--expect ERR] [--nobody] [--nobody-early] [--drop-cap CAP] [--linkat]
//                   [--dir-nofollow] [--src-dir] SRC DIR NAME
//       opens SRC (e.g. /proc/PID/fd/10) and DIR (O_PATH; with --dir-nofollow O_NOFOLLOW too),
//       links SRC's inode at DIR/NAME through the ioctl (--linkat: with linkat(AT_EMPTY_PATH)
//       instead) and checks the result is ERR (an errno name, default OK). --nobody: become
//       uid/gid 65534 (no capabilities) after opening the device; --nobody-early: before;
//       --drop-cap all|dac_override|dac_read_search: stay root, drop that capability after
//       opening everything.
//       NAME "@LONG" = 256 'x' bytes (no NUL in the request).
//       Prints "OK link NAME <seconds>s" or "OK link NAME -> ERR" / "FAIL ...". Exit 0 = as expected.
//   relinktest verify [--nlink N] SRC PATH KIND MIB
//       SRC (held fd path) and PATH (the new name) are the same inode (st_dev, st_ino), both
//       with link count N (default 1); the data segments (SEEK_DATA/SEEK_HOLE) are what KIND
//       (dense|sparse|victim) was written with, and the bytes are the pattern.
//   relinktest check PATH KIND MIB
//       only the segments and bytes of PATH (e.g. in a snapshot).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "snapckpt_relink.h"

#define MIB (1024L * 1024L)
#define BLK 4096L

static void die(const char *what) {
  printf("FAIL %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The content of 1 MiB at offset off (a multiple of 1 MiB) of a file of kind seed.
static void pattern(char *buf, long off, uint64_t seed) {
  for (long b = 0; b < MIB / BLK; b++) {
    uint64_t *w = (uint64_t *)(buf + b * BLK), v = mix(seed ^ (uint64_t)(off + b * BLK));
    w[0] = (uint64_t)(off + b * BLK);
    for (long i = 1; i < BLK / 8; i++) w[i] = v + (uint64_t)i;
  }
}

static uint64_t seed_of(const char *kind) {
  if (!strcmp(kind, "dense")) return 1;
  if (!strcmp(kind, "sparse")) return 2;
  if (!strcmp(kind, "victim")) return 3;
  if (!strcmp(kind, "namegone")) return 4;
  fprintf(stderr, "unknown kind %s\n", kind);
  exit(2);
}

// Data segments (in MiB) KIND was written with: n pairs start,end.
static int segments(const char *kind, long mib, long seg[][2]) {
  if (!strcmp(kind, "sparse")) {
    seg[0][0] = 0, seg[0][1] = 1;
    seg[1][0] = mib / 2, seg[1][1] = mib / 2 + 1;
    seg[2][0] = mib - 1, seg[2][1] = mib;
    return 3;
  }
  seg[0][0] = 0, seg[0][1] = mib;
  return 1;
}

static void write_file(const char *dir, const char *name, const char *kind, long mib) {
  char path[4096], *buf = malloc(MIB);
  long seg[3][2];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0 || !buf) die(path);
  if (ftruncate(fd, mib * MIB)) die("ftruncate");  // EOF first: no speculative preallocation
  int n = segments(kind, mib, seg);
  for (int s = 0; s < n; s++)
    for (long m = seg[s][0]; m < seg[s][1]; m++) {
      pattern(buf, m * MIB, seed_of(kind));
      if (pwrite(fd, buf, MIB, m * MIB) != MIB) die("pwrite");
    }
  if (fsync(fd)) die("fsync");
  free(buf);
  close(fd);
}

static int hold(char **av) {
  const char *dir = av[0];
  long dense = atol(av[1]), sparse = atol(av[2]);
  char p[4096], q[4096];
  write_file(dir, "dense", "dense", dense);
  write_file(dir, "sparse", "sparse", sparse);
  write_file(dir, "victim", "victim", 1);
  write_file(dir, "namegone", "namegone", 1);
  snprintf(p, sizeof p, "%s/namegone", dir);
  snprintf(q, sizeof q, "%s/namegone2", dir);
  if (link(p, q)) die("link namegone2");
  const char *names[] = {"dense", "sparse", "victim", "namegone"};
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    int fd = open(p, O_RDONLY);
    if (fd < 0 || dup2(fd, 10 + i) < 0 || unlink(p)) die(p);
    close(fd);
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, NULL);
  printf("ready %d\n", getpid());
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  return 0;
}

static const char *errname(int e) {
  static const struct { int e; const char *n; } t[] = {
      {0, "OK"},          {EPERM, "EPERM"},   {ENOENT, "ENOENT"},   {EBADF, "EBADF"},
      {EACCES, "EACCES"}, {EEXIST, "EEXIST"}, {EXDEV, "EXDEV"},     {ENOTDIR, "ENOTDIR"},
      {EINVAL, "EINVAL"}, {EROFS, "EROFS"},   {ENOTTY, "ENOTTY"},   {ENAMETOOLONG, "ENAMETOOLONG"},
      {EMLINK, "EMLINK"}, {ELOOP, "ELOOP"},   {EFAULT, "EFAULT"},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (t[i].e == e) return t[i].n;
  static char buf[32];
  snprintf(buf, sizeof buf, "errno%d", e);
  return buf;
}

static void become_nobody(void) {
  if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
    die("drop to nobody");
}

// Drop capability cap (-1: all) from the effective, permitted and inheritable sets.
static void drop_cap(int cap) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  if (syscall(SYS_capget, &hdr, d)) die("capget");
  for (int i = 0; i < 2; i++) {
    uint32_t m = cap < 0 ? 0xffffffffu : (cap / 32 == i ? 1u << (cap % 32) : 0);
    d[i].effective &= ~m, d[i].permitted &= ~m, d[i].inheritable &= ~m;
  }
  if (syscall(SYS_capset, &hdr, d)) die("capset");
}

static int do_link(int ac, char **av) {
  const char *expect = "OK";
  int nobody = 0, early = 0, use_linkat = 0, nofollow = 0, src_dir = 0, i = 0, dropcap = -2;
  for (; i < ac && !strncmp(av[i], "--", 2); i++) {
    if (!strcmp(av[i], "--expect")) expect = av[++i];
    else if (!strcmp(av[i], "--nobody")) nobody = 1;
    else if (!strcmp(av[i], "--nobody-early")) early = 1;
    else if (!strcmp(av[i], "--linkat")) use_linkat = 1;
    else if (!strcmp(av[i], "--dir-nofollow")) nofollow = 1;
    else if (!strcmp(av[i], "--src-dir")) src_dir = 1;
    else if (!strcmp(av[i], "--drop-cap")) {
      const char *c = av[++i];
      dropcap = !strcmp(c, "all") ? -1 : !strcmp(c, "dac_override") ? CAP_DAC_OVERRIDE
              : !strcmp(c, "dac_read_search") ? CAP_DAC_READ_SEARCH : -3;
      if (dropcap == -3) { fprintf(stderr, "--drop-cap all|dac_override|dac_read_search\n"); return 2; }
    }
    else { fprintf(stderr, "bad option %s\n", av[i]); return 2; }
  }
  if (ac - i != 3) { fprintf(stderr, "link: SRC DIR NAME\n"); return 2; }
  const char *src = av[i], *dir = av[i + 1], *name = av[i + 2];
  int sfd = open(src, src_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (sfd < 0) die(src);
  int dfd = open(dir, O_PATH | (nofollow ? O_NOFOLLOW : O_DIRECTORY));
  if (dfd < 0) die(dir);
  struct snapckpt_relink_req req;
  memset(&req, 0, sizeof req);
  req.fd = sfd;
  req.dir_fd = dfd;
  if (!strcmp(name, "@LONG")) memset(req.name, 'x', sizeof req.name);
  else snprintf(req.name, sizeof req.name, "%s", name);
  if (early) become_nobody();
  int dev = -1;
  if (!use_linkat) {
    dev = open(SNAPCKPT_RELINK_DEVICE, O_RDWR | O_CLOEXEC);
    if (dev < 0) {
      const char *got = errname(errno);
      int ok = !strcmp(got, expect);
      printf("%s open %s -> %s (want %s)\n", ok ? "OK" : "FAIL", SNAPCKPT_RELINK_DEVICE, got, expect);
      return !ok;
    }
  }
  if (nobody) become_nobody();
  if (dropcap != -2) drop_cap(dropcap);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int r = use_linkat ? linkat(sfd, "", dfd, req.name, AT_EMPTY_PATH) : ioctl(dev, SNAPCKPT_IOC_RELINK, &req);
  int e = r ? errno : 0;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  const char *got = errname(e);
  int ok = !strcmp(got, expect);
  if (e == 0)
    printf("%s %s %s %.6fs\n", ok ? "OK" : "FAIL", use_linkat ? "linkat" : "link", name, secs);
  else
    printf("%s %s %s -> %s (want %s)\n", ok ? "OK" : "FAIL", use_linkat ? "linkat" : "link",
           name[0] == '@' ? "<256 bytes>" : name, got, expect);
  return !ok;
}

// Check the data segments and bytes of fd against what kind was written with.
static int check_fd(int fd, const char *label, const char *kind, long mib) {
  long seg[3][2];
  int n = segments(kind, mib, seg), bad = 0;
  struct stat st;
  if (fstat(fd, &st)) die("fstat");
  if (st.st_size != mib * MIB) {
    printf("FAIL %s: size %lld, want %ld\n", label, (long long)st.st_size, mib * MIB);
    return 1;
  }
  // the segment map
  off_t pos = 0;
  int k = 0;
  char map[512] = "";
  while (pos < st.st_size) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) break;  // ENXIO: no more data
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) die("SEEK_HOLE");
    size_t l = strlen(map);
    snprintf(map + l, sizeof map - l, "%s%lld-%lld", k ? "," : "", (long long)(d / MIB), (long long)(h / MIB));
    if (k >= n || d != seg[k][0] * MIB || h != seg[k][1] * MIB) bad = 1;
    k++;
    pos = h;
  }
  if (k != n) bad = 1;
  if (bad) {
    printf("FAIL %s: data segments (MiB) %s differ from what was written\n", label, map);
    return 1;
  }
  // the bytes
  char *buf = malloc(MIB), *want = malloc(MIB);
  for (int s = 0; s < n; s++)
    for (long m = seg[s][0]; m < seg[s][1]; m++) {
      pattern(want, m * MIB, seed_of(kind));
      if (pread(fd, buf, MIB, m * MIB) != MIB) die("pread");
      if (memcmp(buf, want, MIB)) {
        printf("FAIL %s: bytes differ in MiB %ld\n", label, m);
        return 1;
      }
    }
  free(buf);
  free(want);
  printf("OK %s: %s %ld MiB, data segments (MiB) %s, bytes match\n", label, kind, mib, map);
  return 0;
}

static int verify(int ac, char **av) {
  long want_nlink = 1;
  if (ac >= 2 && !strcmp(av[0], "--nlink")) want_nlink = atol(av[1]), av += 2, ac -= 2;
  if (ac != 4) { fprintf(stderr, "verify: SRC PATH KIND MIB\n"); return 2; }
  int a = open(av[0], O_RDONLY), b = open(av[1], O_RDONLY | O_NOFOLLOW);
  if (a < 0) die(av[0]);
  if (b < 0) die(av[1]);
  struct stat sa, sb;
  if (fstat(a, &sa) || fstat(b, &sb)) die("fstat");
  if (sa.st_dev != sb.st_dev || sa.st_ino != sb.st_ino) {
    printf("FAIL verify %s: inode %lu:%lu, held fd has %lu:%lu\n", av[1], (unsigned long)sb.st_dev,
           (unsigned long)sb.st_ino, (unsigned long)sa.st_dev, (unsigned long)sa.st_ino);
    return 1;
  }
  if ((long)sa.st_nlink != want_nlink || (long)sb.st_nlink != want_nlink) {
    printf("FAIL verify %s: link count %lu/%lu, want %ld\n", av[1], (unsigned long)sa.st_nlink,
           (unsigned long)sb.st_nlink, want_nlink);
    return 1;
  }
  printf("OK verify %s: st_ino %lu = held fd's, nlink %ld\n", av[1], (unsigned long)sb.st_ino, want_nlink);
  return check_fd(b, av[1], av[2], atol(av[3]));
}

int main(int ac, char **av) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (ac >= 5 && !strcmp(av[1], "hold")) return hold(av + 2);
  if (ac >= 2 && !strcmp(av[1], "link")) return do_link(ac - 2, av + 2);
  if (ac >= 2 && !strcmp(av[1], "verify")) return verify(ac - 2, av + 2);
  if (ac == 5 && !strcmp(av[1], "check")) {
    int fd = open(av[2], O_RDONLY | O_NOFOLLOW);
    if (fd < 0) die(av[2]);
    return check_fd(fd, av[2], av[3], atol(av[4]));
  }
  fprintf(stderr, "usage: relinktest hold|link|verify|check ... (see the source)\n");
  return 2;
}
