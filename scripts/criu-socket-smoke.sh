#!/usr/bin/env bash
# Raw-CRIU smoke test for inet sockets (no snapckpt involved):
#   (a) a process with a TCP listener on 127.0.0.1: dump, restore, a new connection is served
#   (b) an established TCP connection to a peer outside the dumped tree: dump and restore with
#       --tcp-established (network locked with nftables); the peer keeps sending through the
#       dump, a 1 s gap and the restore, and every line is echoed back in order
#   (c) a UDP socket bound on 127.0.0.1: dump, restore, datagrams are still echoed
#
#   scripts/criu-socket-smoke.sh [CRIU]      (default $SNAPCKPT_CRIU, else /opt/snapckpt/criu/bin/criu)
#
# Root; needs gcc (or $CC) and iproute2. Everything runs in a network namespace of its own
# (`ip netns add`, only its loopback is used); the tasks are one small C program written to a
# temp dir and compiled there. Bounded (~150 s worst case, ~10 s normally);
# kills what it started and removes the namespace and the temp dir. Exit 0 only if (a), (b)
# and (c) all pass. SNAPCKPT_SMOKE_KEEP=1 keeps the temp dir (images and logs);
# SNAPCKPT_SMOKE_NETWORK_LOCK=skip shows (b) failing without a network lock.
set -euo pipefail

CRIU=${1:-${SNAPCKPT_CRIU:-/opt/snapckpt/criu/bin/criu}}
CC=${CC:-gcc}

log() { printf 'criu-socket-smoke: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- outer part
if [ "${SNAPCKPT_SMOKE_INNER:-}" != 1 ]; then
    [ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 2; }
    command -v ip >/dev/null || { log "'ip' (iproute2) not found"; exit 2; }
    command -v "$CC" >/dev/null || { log "C compiler '$CC' not found"; exit 2; }
    [ -x "$CRIU" ] || { log "criu not found at $CRIU"; exit 2; }
    NS=snapckpt-smoke-$$
    TMP=$(mktemp -d /tmp/snapckpt-criu-smoke.XXXXXX)
    outer_cleanup() {
        local p
        # Whatever is still in the namespace was started by this script.
        for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns delete "$NS" 2>/dev/null || true
        if [ "${SNAPCKPT_SMOKE_KEEP:-}" = 1 ]; then log "kept $TMP"; else rm -rf -- "$TMP"; fi
    }
    trap outer_cleanup EXIT
    ip netns add "$NS"
    rc=0
    # One `ip netns exec` for everything: criu and the tasks share its mount namespace.
    SNAPCKPT_SMOKE_INNER=1 SNAPCKPT_SMOKE_TMP=$TMP \
        timeout -k 5 150 ip netns exec "$NS" bash "$(readlink -f "$0")" "$CRIU" || rc=$?
    [ "$rc" -ne 124 ] || log "timed out"
    exit "$rc"
fi

# ---------------------------------------------------------------- inner part (in the netns)
T=$SNAPCKPT_SMOKE_TMP
ip link set lo up
STARTED=()
inner_cleanup() {
    local p
    for p in "${STARTED[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap inner_cleanup EXIT

cat >"$T/prog.c" <<'CEOF'
/* criu-socket-smoke helper: one binary, one mode per argv[1]. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(errno));
	exit(1);
}

static struct sockaddr_in lo(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int tcp_listen(int port, int backlog)
{
	struct sockaddr_in a = lo(port);
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, backlog))
		die("listen on %d", port);
	return s;
}

/* timeout_s: receive timeout, 0 = none */
static int tcp_connect(int port, int timeout_s)
{
	struct sockaddr_in a = lo(port);
	struct timeval tv = { .tv_sec = timeout_s };
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)))
		die("connect to %d", port);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return s;
}

/* pid into PATH, atomically: the script waits for it */
static void ready(const char *path)
{
	char tmp[4096];
	FILE *f;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (!(f = fopen(tmp, "w")) || fprintf(f, "%d", getpid()) < 0 || fclose(f) || rename(tmp, path))
		die("ready %s", path);
}

static void send_all(int s, const char *buf, size_t n)
{
	while (n) {
		ssize_t w = send(s, buf, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("send");
		buf += w, n -= w;
	}
}

/* one '\n'-terminated line (without it) into line; 0 on EOF */
static int read_line(int s, char *line, size_t max)
{
	size_t n = 0;
	while (n + 1 < max) {
		ssize_t r = recv(s, line + n, 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("recv");
		if (r == 0)
			return 0;
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = 0;
	return 1;
}

static FILE *log_open(const char *path)
{
	FILE *f = fopen(path, "a");
	if (!f)
		die("open %s", path);
	setvbuf(f, NULL, _IOLBF, 0);
	return f;
}

int main(int argc, char **argv)
{
	char buf[512], exp[64];
	const char *mode = argc > 2 ? argv[1] : "";
	int port = argc > 2 ? atoi(argv[2]) : 0;

	/* Fds inherited from whoever runs the smoke test may be on mounts of another mount
	 * namespace (ip netns exec makes a new one): criu cannot dump those. */
	syscall(SYS_close_range, 3U, ~0U, 0);

	if (!strcmp(mode, "listener") && argc == 4) { /* (a) dumped: answers each connection */
		int s = tcp_listen(port, 8);
		ready(argv[3]);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c < 0) {
				if (errno == EINTR)
					continue;
				die("accept");
			}
			snprintf(buf, sizeof(buf), "hello %d\n", getpid());
			send_all(c, buf, strlen(buf));
			close(c);
		}
	} else if (!strcmp(mode, "udp") && argc == 4) { /* (c) dumped: UDP echo */
		struct sockaddr_in a = lo(port), from;
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)))
			die("udp bind %d", port);
		ready(argv[3]);
		for (;;) {
			socklen_t fl = sizeof(from);
			char out[600];
			ssize_t r = recvfrom(s, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &fl);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				die("recvfrom");
			}
			buf[r] = 0;
			snprintf(out, sizeof(out), "echo %d %s", getpid(), buf);
			sendto(s, out, strlen(out), 0, (struct sockaddr *)&from, fl);
		}
	} else if (!strcmp(mode, "peer") && argc == 5) {
		/* (b) not dumped: sends a seq line every 20 ms whether or not echoes come back (so it
		 * keeps sending while the talker is dumped: into criu's network lock), checks that the
		 * echoes come back in order, logs each echoed seq. */
		int l = tcp_listen(port, 1), c;
		unsigned long sent = 0, want = 1;
		size_t have = 0;
		struct timeval next, now;
		FILE *f;
		ready(argv[3]);
		while ((c = accept(l, NULL, NULL)) < 0)
			if (errno != EINTR)
				die("accept");
		close(l);
		f = log_open(argv[4]);
		gettimeofday(&next, NULL);
		for (;;) {
			struct pollfd p = { .fd = c, .events = POLLIN };
			long ms;
			char *nl;
			gettimeofday(&now, NULL);
			ms = (next.tv_sec - now.tv_sec) * 1000 + (next.tv_usec - now.tv_usec) / 1000;
			if (ms <= 0) {
				char out[32];
				snprintf(out, sizeof(out), "%lu\n", ++sent);
				send_all(c, out, strlen(out));
				next.tv_usec += 20000;
				if (next.tv_usec >= 1000000)
					next.tv_sec++, next.tv_usec -= 1000000;
				continue;
			}
			if (poll(&p, 1, (int)ms) <= 0)
				continue;
			ssize_t r = recv(c, buf + have, sizeof(buf) - 1 - have, 0);
			if (r <= 0) {
				fprintf(f, r ? "ERR %s\n" : "EOF\n", strerror(errno));
				return 1;
			}
			have += r;
			buf[have] = 0;
			while ((nl = strchr(buf, '\n'))) {
				*nl = 0;
				snprintf(exp, sizeof(exp), "echo %lu", want);
				if (strcmp(buf, exp)) {
					fprintf(f, "BAD %s (want %s)\n", buf, exp);
					return 1;
				}
				fprintf(f, "%lu\n", want++);
				have -= nl + 1 - buf;
				memmove(buf, nl + 1, have + 1);
			}
		}
	} else if (!strcmp(mode, "talker") && argc == 5) { /* (b) dumped: echoes each line, in order */
		int s = tcp_connect(port, 0); /* no timeout: it waits through the dump */
		FILE *f = log_open(argv[4]);
		ready(argv[3]);
		for (unsigned long i = 1;; i++) {
			char out[600];
			if (!read_line(s, buf, sizeof(buf))) {
				fprintf(f, "EOF\n");
				return 1;
			}
			snprintf(exp, sizeof(exp), "%lu", i);
			if (strcmp(buf, exp)) {
				fprintf(f, "BAD %s (want %s)\n", buf, exp);
				return 1;
			}
			snprintf(out, sizeof(out), "echo %s\n", buf);
			send_all(s, out, strlen(out));
			fprintf(f, "%lu\n", i);
		}
	} else if (!strcmp(mode, "tcp-get") && argc == 3) { /* client: one line from a server */
		int s = tcp_connect(port, 5);
		if (!read_line(s, buf, sizeof(buf)))
			die("tcp-get: EOF");
		puts(buf);
		return 0;
	} else if (!strcmp(mode, "udp-ping") && argc == 4) { /* client: one datagram round trip */
		struct sockaddr_in a = lo(port);
		struct timeval tv = { .tv_sec = 5 };
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		ssize_t r;
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (sendto(s, argv[3], strlen(argv[3]), 0, (struct sockaddr *)&a, sizeof(a)) < 0)
			die("sendto");
		if ((r = recv(s, buf, sizeof(buf) - 1, 0)) < 0)
			die("udp-ping recv");
		buf[r] = 0;
		puts(buf);
		return 0;
	}
	fprintf(stderr, "usage: prog listener|udp PORT READY | peer|talker PORT READY LOG | "
			"tcp-get PORT | udp-ping PORT MSG\n");
	return 2;
}
CEOF
"$CC" -O2 -Wall -o "$T/prog" "$T/prog.c"

# start NAME ARGS...: a session leader (criu wants one), no tty; sets PID from its ready file.
start() {
    local name=$1 i
    shift
    rm -f "$T/$name.ready"
    setsid "$T/prog" "$@" </dev/null >"$T/$name.out" 2>&1 &
    STARTED+=("$!")
    disown "$!"     # no "Killed" job notices when criu dump kills it
    for i in $(seq 100); do
        if [ -s "$T/$name.ready" ]; then
            PID=$(cat "$T/$name.ready"); STARTED+=("$PID"); return 0
        fi
        sleep 0.05
    done
    log "$name did not get ready: $(cat "$T/$name.out")"
    return 1
}

gone() {    # wait until pid $1 no longer exists
    local i
    for i in $(seq 200); do [ -d "/proc/$1" ] || return 0; sleep 0.05; done
    return 1
}

last_seq() { grep -E '^[0-9]+$' "$1" 2>/dev/null | tail -n1 || true; }

# dump_restore NAME PID CRIU-OPTS...: dump (task killed), wait, restore detached.
# DUMP_ONLY (array): options for the dump alone (restore takes the lock method from the image).
# GAP: seconds between dump and restore.
DUMP_ONLY=() GAP=0
dump_restore() {
    local name=$1 pid=$2 d="$T/$1.img" t0 t1 tg t2
    shift 2
    mkdir -p "$d"
    t0=$(date +%s.%N)
    if ! timeout 30 "$CRIU" dump -t "$pid" -D "$d" -o dump.log -v4 "${DUMP_ONLY[@]}" "$@"; then
        log "$name: dump failed"; grep -E 'Error|Warn' "$d/dump.log" | tail -n 15 >&2; return 1
    fi
    t1=$(date +%s.%N)
    gone "$pid" || { log "$name: pid $pid still there after dump"; return 1; }
    sleep "$GAP"
    tg=$(date +%s.%N)
    if ! timeout 30 "$CRIU" restore -D "$d" -d -o restore.log -v4 "$@"; then
        log "$name: restore failed"; grep -E 'Error|Warn' "$d/restore.log" | tail -n 15 >&2; return 1
    fi
    t2=$(date +%s.%N)
    [ -d "/proc/$pid" ] || { log "$name: restored pid $pid not running"; return 1; }
    log "$name: dump $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s, restore $(awk "BEGIN { printf \"%.2f\", $t2 - $tg }") s"
}

test_a() {
    local pid out
    start listener listener 7001 "$T/listener.ready" || return 1; pid=$PID
    out=$("$T/prog" tcp-get 7001) && [ "$out" = "hello $pid" ] ||
        { log "(a) listener does not answer before dump: '$out'"; return 1; }
    dump_restore listener "$pid" || return 1
    out=$("$T/prog" tcp-get 7001) || { log "(a) no answer after restore"; return 1; }
    [ "$out" = "hello $pid" ] || { log "(a) unexpected answer after restore: '$out'"; return 1; }
    out=$("$T/prog" tcp-get 7001) && [ "$out" = "hello $pid" ] ||
        { log "(a) second connection after restore failed"; return 1; }
    kill -9 "$pid"
}

test_b() {
    local ppid tpid before after i
    start peer peer 7002 "$T/peer.ready" "$T/peer.log" || return 1; ppid=$PID
    start talker talker 7002 "$T/talker.ready" "$T/talker.log" || return 1; tpid=$PID
    sleep 0.5
    before=$(last_seq "$T/peer.log")
    [ -n "$before" ] || { log "(b) no traffic before dump"; return 1; }
    # nftables: criu's own libnftables, no iptables binary needed on the host. The peer
    # sends ~50 lines during the 1 s gap: they must be held by the lock (an unlocked
    # connection without its socket answers them with a RST), then delivered after restore.
    DUMP_ONLY=(--network-lock "${SNAPCKPT_SMOKE_NETWORK_LOCK:-nftables}") GAP=1
    dump_restore talker "$tpid" --tcp-established || { DUMP_ONLY=() GAP=0; return 1; }
    DUMP_ONLY=() GAP=0
    before=$(last_seq "$T/peer.log")
    for i in $(seq 100); do
        after=$(last_seq "$T/peer.log")
        [ -n "$after" ] && [ "$after" -ge $((before + 75)) ] && break
        sleep 0.1
    done
    after=$(last_seq "$T/peer.log")
    if grep -qE 'EOF|BAD|ERR' "$T/peer.log" "$T/talker.log"; then
        log "(b) connection broken: $(grep -hE 'EOF|BAD|ERR' "$T/peer.log" "$T/talker.log" | head -n2)"; return 1
    fi
    [ -d "/proc/$ppid" ] || { log "(b) peer died: $(tail -n1 "$T/peer.log")"; return 1; }
    [ -n "$after" ] && [ "$after" -ge $((before + 75)) ] ||
        { log "(b) echoes did not resume after restore (seq $before -> ${after:-none})"; return 1; }
    log "(b) peer: echoed seq $before right after restore, $after later, all in order"
    kill -9 "$tpid" "$ppid"
}

test_c() {
    local pid out
    start udp udp 7003 "$T/udp.ready" || return 1; pid=$PID
    out=$("$T/prog" udp-ping 7003 before) && [ "$out" = "echo $pid before" ] ||
        { log "(c) no UDP echo before dump: '$out'"; return 1; }
    dump_restore udp "$pid" || return 1
    out=$("$T/prog" udp-ping 7003 after) || { log "(c) no UDP echo after restore"; return 1; }
    [ "$out" = "echo $pid after" ] || { log "(c) unexpected UDP answer: '$out'"; return 1; }
    kill -9 "$pid"
}

fail=0
log "criu: $CRIU ($("$CRIU" --version | head -n1))"
for t in a b c; do
    if "test_$t"; then log "($t) PASS"; else log "($t) FAIL"; fail=1; fi
done
[ "$fail" -eq 0 ] && log "all passed" || log "FAILED"
exit "$fail"
