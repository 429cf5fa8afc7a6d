/* memhold: a test workload with a large resident memory filled with a known pattern and an
 * unlinked file, for the pre-dump tests (integration/vm/lvm-guest/test.sh).
 *
 *   memhold DIR MIB REPORT   map MIB MiB of anonymous memory and fill every 8-byte word with
 *                            a pattern derived from its index; create DIR/orphan (1 MiB of a
 *                            byte pattern), keep it open and unlink it; print "ready PID"
 *                            and wait. SIGUSR1: recompute the memory and the file against the
 *                            patterns and write one line to REPORT (created anew each time):
 *                            "checked mem=ok|bad@WORD file=ok|bad nlink=N hash=HEX".
 *                            SIGUSR2: rewrite the first word of each page of the first 1/16
 *                            of the memory (contiguous: with transparent huge pages the
 *                            kernel tracks changes per 2 MiB), then write "dirtied" to REPORT.
 *
 * The pattern of word i (and the file's byte i) are pure functions of i, so a restored task
 * checks itself with nothing kept outside its memory.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_BYTES (1 << 20)

static volatile sig_atomic_t want_check, want_dirty;
static void on_usr1(int s) { (void)s; want_check = 1; }
static void on_usr2(int s) { (void)s; want_dirty = 1; }

static uint64_t word(uint64_t i, uint64_t gen)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ gen;
	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	return x ^ (x >> 29);
}

static unsigned char fbyte(size_t i) { return (unsigned char)(i * 7 + (i >> 12)); }

static void report(const char *path, const char *line)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, strlen(line)) < 0) {
		/* nothing to do: the test sees no report */
	}
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: memhold DIR MIB REPORT\n");
		return 2;
	}
	size_t words = (size_t)atol(argv[2]) << 17; /* MiB / 8 */
	uint64_t *mem = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	/* generation of each page's first word: 0, or 1 once dirtied by SIGUSR2 */
	size_t pages = words / 512;
	unsigned char *gen = calloc(pages, 1);
	for (size_t i = 0; i < words; i++)
		mem[i] = word(i, 0);

	char path[4096];
	snprintf(path, sizeof(path), "%s/orphan", argv[1]);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	unsigned char *buf = malloc(FILE_BYTES);
	for (size_t i = 0; i < FILE_BYTES; i++)
		buf[i] = fbyte(i);
	if (write(fd, buf, FILE_BYTES) != FILE_BYTES || fsync(fd) != 0 || unlink(path) != 0) {
		perror("orphan");
		return 1;
	}

	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;) {
		sigset_t none;
		sigemptyset(&none);
		if (!want_check && !want_dirty)
			sigsuspend(&none);
		if (want_dirty) {
			want_dirty = 0;
			for (size_t p = 0; p < pages / 16; p++) {
				gen[p] = 1;
				mem[p * 512] = word(p * 512, gen[p]);
			}
			report(argv[3], "dirtied\n");
		}
		if (want_check) {
			want_check = 0;
			size_t bad = (size_t)-1;
			uint64_t h = 1469598103934665603ull;
			for (size_t i = 0; i < words; i++) {
				uint64_t g = (i % 512 == 0) ? gen[i / 512] : 0;
				if (mem[i] != word(i, g) && bad == (size_t)-1)
					bad = i;
				h = (h ^ mem[i]) * 1099511628211ull;
			}
			memset(buf, 0, FILE_BYTES);
			int fok = pread(fd, buf, FILE_BYTES, 0) == FILE_BYTES;
			for (size_t i = 0; fok && i < FILE_BYTES; i++)
				fok = buf[i] == fbyte(i);
			struct stat st;
			fstat(fd, &st);
			char line[256], m[64];
			if (bad == (size_t)-1)
				snprintf(m, sizeof(m), "ok");
			else
				snprintf(m, sizeof(m), "bad@%zu", bad);
			snprintf(line, sizeof(line), "checked mem=%s file=%s nlink=%ld hash=%016llx\n", m,
				 fok ? "ok" : "bad", (long)st.st_nlink, (unsigned long long)h);
			report(argv[3], line);
		}
	}
}
