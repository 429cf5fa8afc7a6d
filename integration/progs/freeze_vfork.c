/*
 * freeze_vfork: a process that SIGSTOP cannot stop, deterministically.
 *
 * The parent vfork()s; the child just sleeps. Until the child exits or execs, the parent
 * waits in wait_for_vfork_done(), an uninterruptible (killable) sleep, shown as state 'D'
 * in /proc/PID/stat: a SIGSTOP stays pending and the parent never reaches state 'T'. The
 * freezer tests use it to provoke FreezeTimeout. Kill the child to let the parent go on;
 * the parent then sleeps until killed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	pid_t c = vfork();
	if (c < 0) {
		perror("vfork");
		return 2;
	}
	if (c == 0) {
		/* Only async-signal-safe calls that do not touch the shared stack frame. */
		for (;;)
			pause();
	}
	for (;;)
		pause();
}
