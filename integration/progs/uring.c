/* uring: a session leader holding an io_uring instance (which CRIU cannot dump), then waits.
 *   uring      prints "ready" and sleeps */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0) { perror("io_uring_setup"); return 1; }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
