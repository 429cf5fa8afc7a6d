/*
 * freeze_tree: a small multi-process, multi-threaded workload for the freezer tests.
 *
 * usage: freeze_tree DIR [ROOT_CGROUP_PROCS [LEAF_CGROUP_PROCS]]
 *
 * Starts a chain of three processes: root -> child -> grandchild. Process N (0, 1, 2) runs
 * two extra threads besides its main thread:
 *   - a counter thread that increments a counter every 10 ms and publishes it atomically
 *     (write DIR/.counter.N.tmp, rename to DIR/counter.N), so a reader never sees a torn value;
 *   - an idle thread that sleeps in short naps (more threads for the freezer to stop).
 * The main thread of each process reaps its child and then sleeps forever, so that the
 * test can kill the chain leaf-first and nothing is left as a zombie.
 *
 * If ROOT_CGROUP_PROCS is given, the root joins that cgroup (by writing its pid to the
 * cgroup.procs file) before forking, so the whole chain is in it; if LEAF_CGROUP_PROCS is
 * given, the grandchild moves on into that (descendant) cgroup.
 * Children die with their parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;
static int index_;

static void die(const char *what)
{
	fprintf(stderr, "freeze_tree[%d]: %s: %s\n", (int)getpid(), what, strerror(errno));
	exit(2);
}

static void join_cgroup(const char *procs)
{
	FILE *f = fopen(procs, "w");
	if (!f)
		die(procs);
	if (fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0)
		die(procs);
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void *counter_thread(void *arg)
{
	char tmp[4096], final[4096], buf[32];
	long n = 0;
	(void)arg;
	snprintf(tmp, sizeof tmp, "%s/.counter.%d.tmp", dir, index_);
	snprintf(final, sizeof final, "%s/counter.%d", dir, index_);
	for (;;) {
		int len = snprintf(buf, sizeof buf, "%ld\n", ++n);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			die(tmp);
		if (write(fd, buf, len) != len)
			die("write");
		close(fd);
		if (rename(tmp, final) < 0)
			die("rename");
		nap_ms(10);
	}
	return NULL;
}

static void *idle_thread(void *arg)
{
	(void)arg;
	for (;;)
		nap_ms(3);
	return NULL;
}

static void run(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, counter_thread, NULL) != 0)
		die("pthread_create");
	if (pthread_create(&t, NULL, idle_thread, NULL) != 0)
		die("pthread_create");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: freeze_tree DIR [ROOT_CGROUP_PROCS [LEAF_CGROUP_PROCS]]\n");
		return 2;
	}
	dir = argv[1];
	if (argc > 2)
		join_cgroup(argv[2]);

	for (index_ = 0; index_ < 2; index_++) {
		pid_t parent = getpid();
		pid_t c = fork();
		if (c < 0)
			die("fork");
		if (c > 0)
			break; /* the parent keeps its index and runs below */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			die("prctl");
		if (getppid() != parent)
			_exit(0);
	}
	/* index_ is 0, 1 (after break) or 2 (the grandchild, loop ran out). */
	if (index_ == 2 && argc > 3)
		join_cgroup(argv[3]);
	run();
	for (;;) {
		if (wait(NULL) < 0 && errno == ECHILD)
			pause();
	}
}
