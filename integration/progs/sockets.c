/* sockets: a socket server (or client) for the sockets tests; one mode per run. It counts
 * what it served in its memory, so a restored one shows it continues from checkpoint time.
 *
 *   sockets tcp-listen PORT      listen on 127.0.0.1:PORT; each connection: every line L is
 *                                answered "srv conn=C line=N L" (C: connections accepted so
 *                                far, N: lines served so far, both over the process's life)
 *   sockets tcp-connect PORT     connect to 127.0.0.1:PORT (a peer outside the tree); every
 *                                line L it receives is answered "cli line=N L"
 *   sockets udp PORT             bind UDP 127.0.0.1:PORT; every datagram D is answered to its
 *                                sender with "udp n=N D"
 *   sockets unix PATH            listen on a unix stream socket bound at PATH; as tcp-listen
 *   sockets unix-dgram PATH      a unix datagram socket connected to PATH (a server outside
 *                                the tree); on SIGUSR1 it sends "dgram n=N" to it
 *
 * Prints "ready pid=P" when set up, then nothing (its stdout is a file CRIU reopens).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXC 16

static void die(const char *what) {
    fprintf(stderr, "sockets: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long conns, lines;
static volatile sig_atomic_t usr1;
static void on_usr1(int s) { (void)s; usr1 = 1; }

struct conn {
    int fd;
    char buf[4096];
    size_t len;
};

static void ready(void) {
    printf("ready pid=%d\n", getpid());
    fflush(stdout);
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* Answer every complete line in c's buffer; -1 if the connection is to be closed. */
static int serve_lines(struct conn *c, const char *who) {
    char *nl;
    while ((nl = memchr(c->buf, '\n', c->len))) {
        *nl = 0;
        char out[4200];
        int n;
        lines++;
        if (!strcmp(who, "srv"))
            n = snprintf(out, sizeof out, "srv conn=%ld line=%ld %s\n", conns, lines, c->buf);
        else
            n = snprintf(out, sizeof out, "cli line=%ld %s\n", lines, c->buf);
        if (write(c->fd, out, n) != n) return -1;
        size_t used = nl + 1 - c->buf;
        memmove(c->buf, nl + 1, c->len - used);
        c->len -= used;
    }
    return 0;
}

/* Read what is there; -1 on EOF or error. */
static int read_some(struct conn *c) {
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
    if (n <= 0) return -1;
    c->len += n;
    return 0;
}

static void stream_server(int lfd) {
    struct conn cs[MAXC];
    int nc = 0;
    if (listen(lfd, 16) < 0) die("listen");
    ready();
    for (;;) {
        struct pollfd p[MAXC + 1];
        p[0] = (struct pollfd){ .fd = lfd, .events = POLLIN };
        for (int i = 0; i < nc; i++) p[i + 1] = (struct pollfd){ .fd = cs[i].fd, .events = POLLIN };
        if (poll(p, nc + 1, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int i = nc - 1; i >= 0; i--) {
            if (!p[i + 1].revents) continue;
            if (read_some(&cs[i]) < 0 || serve_lines(&cs[i], "srv") < 0) {
                close(cs[i].fd);
                cs[i] = cs[--nc];
            }
        }
        if (p[0].revents & POLLIN) {
            int fd = accept(lfd, NULL, NULL);
            if (fd < 0) continue;
            if (nc == MAXC) { close(fd); continue; }
            conns++;
            cs[nc++] = (struct conn){ .fd = fd, .len = 0 };
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sockets tcp-listen|tcp-connect|udp PORT | unix|unix-dgram PATH\n");
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "tcp-listen")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in a = loopback(atoi(argv[2]));
        if (fd < 0) die("socket");
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
        stream_server(fd);
    } else if (!strcmp(mode, "unix")) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        if (fd < 0) die("socket");
        if (strlen(argv[2]) >= sizeof a.sun_path) { errno = ENAMETOOLONG; die(argv[2]); }
        strcpy(a.sun_path, argv[2]);
        unlink(argv[2]);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
        stream_server(fd);
    } else if (!strcmp(mode, "tcp-connect")) {
        struct conn c = { .fd = socket(AF_INET, SOCK_STREAM, 0), .len = 0 };
        struct sockaddr_in a = loopback(atoi(argv[2]));
        if (c.fd < 0) die("socket");
        if (connect(c.fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
        ready();
        for (;;) {
            if (read_some(&c) < 0) {
                if (errno == EINTR) continue;
                return 0; /* the peer closed */
            }
            if (serve_lines(&c, "cli") < 0) return 0;
        }
    } else if (!strcmp(mode, "udp")) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = loopback(atoi(argv[2]));
        if (fd < 0) die("socket");
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
        ready();
        for (;;) {
            char in[2048], out[2200];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(fd, in, sizeof in - 1, 0, (struct sockaddr *)&from, &fl);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("recvfrom");
            }
            in[n] = 0;
            lines++;
            int k = snprintf(out, sizeof out, "udp n=%ld %s", lines, in);
            sendto(fd, out, k, 0, (struct sockaddr *)&from, fl);
        }
    } else if (!strcmp(mode, "unix-dgram")) {
        int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        if (fd < 0) die("socket");
        if (strlen(argv[2]) >= sizeof a.sun_path) { errno = ENAMETOOLONG; die(argv[2]); }
        strcpy(a.sun_path, argv[2]);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
        signal(SIGUSR1, on_usr1);
        ready();
        for (;;) {
            pause();
            if (usr1) {
                usr1 = 0;
                char out[64];
                int k = snprintf(out, sizeof out, "dgram n=%ld", ++lines);
                send(fd, out, k, 0);
            }
        }
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
