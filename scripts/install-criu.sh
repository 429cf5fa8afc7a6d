#!/usr/bin/env bash
# Install a Debian criu >= 4.2 (today: 4.2.1 from forky/testing) and every library it
# needs into a private prefix, without touching /etc/apt or the host's dpkg database.
#
#   PREFIX=${SNAPCKPT_CRIU_PREFIX:-/opt/snapckpt/criu}
#   PREFIX/bin/criu    wrapper: runs PREFIX/usr/sbin/criu through the prefix's own
#                      ld-linux-x86-64.so.2 --library-path PREFIX/usr/lib/x86_64-linux-gnu
#                      (exec, all args and inherited fds passed through)
#
# Why: bookworm's criu 3.17.1 fails `criu check` on the 6.x host kernel; trixie's
# 4.1.1 cannot dump TCP/UDP sockets on 6.18 (getsockopt SO_PASSCRED on an inet socket
# is EOPNOTSUPP; fixed in CRIU 4.2: "criu/sockets: Restrict SO_PASSCRED and SO_PASSSEC
# to supported families"). Newer suites' criu needs a newer libc6, so it is run with
# that suite's own loader and libc.
#
# Mirror: the URI of the host's Debian archive entry in
# /etc/apt/sources.list.d/debian.sources (or /etc/apt/sources.list); override with
# SNAPCKPT_DEBIAN_MIRROR. Suites: SNAPCKPT_CRIU_SUITES (default "trixie-backports forky
# sid"), tried in order, one at a time (never mixed): the first whose criu is >=
# SNAPCKPT_CRIU_MIN_VERSION (default 4.2) is used, with its own libc and libraries.
#
# Idempotent: if PREFIX/bin/criu --version works, is >= the minimum version, and
# PREFIX/.snapckpt-criu-stamp matches this script's STAMP, nothing is downloaded.
# Always ends with `criu check`.
# Needs root. Exit status != 0 if anything, including `criu check`, fails.
set -euo pipefail

SCRIPT_VERSION=2
SUITES=${SNAPCKPT_CRIU_SUITES:-trixie-backports forky sid}
MIN_VERSION=${SNAPCKPT_CRIU_MIN_VERSION:-4.2}
PREFIX=${SNAPCKPT_CRIU_PREFIX:-/opt/snapckpt/criu}
PREFIX=${PREFIX%/}
STAMP="snapckpt-install-criu v${SCRIPT_VERSION} suites=${SUITES} min=${MIN_VERSION}"
STAMP_FILE="$PREFIX/.snapckpt-criu-stamp"
MULTIARCH=x86_64-linux-gnu
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'install-criu: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (got $(uname -m))"
case "$PREFIX" in /?*) ;; *) die "SNAPCKPT_CRIU_PREFIX must be an absolute path: '$PREFIX'" ;; esac

run_check() {
    local out rc=0
    out=$("$PREFIX/bin/criu" check 2>&1 9>&-) || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || ! grep -q 'Looks good' <<<"$out"; then
        die "'$PREFIX/bin/criu check' failed (exit $rc)"
    fi
    log "criu check: OK ($PREFIX/bin/criu)"
}

# Host tools criu runs at run time (only for network namespaces): `ip` from iproute2.
ensure_host_packages() {
    if ! command -v ip >/dev/null 2>&1; then
        log "installing host package iproute2"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2
    fi
}

# criu_version CMD...: "Version: 4.2.1" (CMD --version) -> 4.2.1
criu_version() { "$@" --version 2>/dev/null | awk '$1 == "Version:" { print $2; exit }'; }
version_ok() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$MIN_VERSION"; }

# One installer at a time per prefix.
mkdir -p "$(dirname "$PREFIX")"
exec 9>"$PREFIX.lock"
flock 9

# ---- cached? ---------------------------------------------------------------
if [ -x "$PREFIX/bin/criu" ] && [ -f "$STAMP_FILE" ] &&
    [ "$(cat "$STAMP_FILE")" = "$STAMP" ] &&
    version_ok "$(criu_version "$PREFIX/bin/criu")"; then
    log "already installed ($("$PREFIX/bin/criu" --version | head -n1)), nothing to do"
    ensure_host_packages
    run_check
    exit 0
fi

ensure_host_packages
for tool in apt-get dpkg-deb awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found"
done
[ -r "$KEYRING" ] || die "$KEYRING missing (package debian-archive-keyring)"

# ---- mirror URI from the host's own sources ---------------------------------
find_mirror() {
    local f=/etc/apt/sources.list.d/debian.sources uri=""
    if [ -r "$f" ]; then
        # deb822: first stanza of Types deb whose Suites are not only *-security.
        uri=$(awk '
            function flush() {
                if (!done && types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && nonsec) { print uris; done = 1 }
                types = ""; uris = ""; nonsec = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:" { types = $0; sub(/^[^:]*:/, "", types) }
            tolower($1) == "uris:"  { uris = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) nonsec = 1 }
            END { flush() }' "$f")
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" {
                  i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                  if ($(i+1) !~ /-security$/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s' "$uri"
}
MIRROR=${SNAPCKPT_DEBIAN_MIRROR:-$(find_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror URI found in /etc/apt (set SNAPCKPT_DEBIAN_MIRROR)"
log "mirror $MIRROR, suites '$SUITES' (criu >= $MIN_VERSION), prefix $PREFIX"

# ---- private apt state --------------------------------------------------------
WORK=$(mktemp -d /tmp/snapckpt-criu.XXXXXX)
STAGE="$PREFIX.new.$$"
cleanup() { rm -rf -- "$WORK" "$STAGE"; }
trap cleanup EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$WORK/empty.d"
touch "$WORK/status"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$WORK/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::Etc::Preferences=/nonexistent"
    -o "Dir::Etc::PreferencesParts=$WORK/empty.d"
    -o "Dir::State::Lists=$WORK/lists"
    -o "Dir::State::status=$WORK/status"
    -o "Dir::State::extended_states=$WORK/extended_states"
    -o "Dir::Cache=$WORK/cache"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "APT::Sandbox::User=root"
    -o "APT::Get::List-Cleanup=false"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
    -o "Acquire::Languages=none"
)

# First suite (one at a time, private lists) whose criu is new enough.
SUITE="" CRIU_DEB_VERSION=""
for s in $SUITES; do
    printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$s" >"$WORK/sources.list"
    rm -rf -- "$WORK/lists" && mkdir -p "$WORK/lists/partial"
    log "apt-get update (private lists): $s"
    if ! apt-get "${APT_OPTS[@]}" -qq update; then
        log "suite $s: apt-get update failed, skipped"
        continue
    fi
    v=$(apt-cache "${APT_OPTS[@]}" policy criu | awk '$1 == "Candidate:" { print $2 }')
    if [ -n "$v" ] && [ "$v" != "(none)" ] && dpkg --compare-versions "$v" ge "$MIN_VERSION"; then
        SUITE=$s CRIU_DEB_VERSION=$v
        break
    fi
    log "suite $s: criu ${v:-(none)} is not >= $MIN_VERSION, skipped"
done
[ -n "$SUITE" ] || die "no suite of '$SUITES' carries criu >= $MIN_VERSION"
log "using criu $CRIU_DEB_VERSION from $SUITE"

# Dependency closure: apt's resolver against an empty dpkg status (nothing installed).
mapfile -t PKGS < <(apt-get "${APT_OPTS[@]}" -s --no-install-recommends install criu libcompel1 |
    awk '$1 == "Inst" { print $2 }')
[ "${#PKGS[@]}" -gt 0 ] || die "could not resolve criu's dependencies in $SUITE"
printf '%s\n' "${PKGS[@]}" | grep -qx criu || die "criu not in the resolved set"
printf '%s\n' "${PKGS[@]}" | grep -qx libc6 || die "libc6 not in the resolved set"
log "downloading ${#PKGS[@]} packages: ${PKGS[*]}"
(cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" -qq download "${PKGS[@]}")

# ---- extract into a staging dir next to PREFIX, verify, then swap -----------------
rm -rf -- "$STAGE"
mkdir -p "$STAGE"
for deb in "$WORK"/debs/*.deb; do
    dpkg-deb -x "$deb" "$STAGE"
done
LOADER_REL=usr/lib/$MULTIARCH/ld-linux-x86-64.so.2
LIBDIR_REL=usr/lib/$MULTIARCH
[ -e "$STAGE/$LOADER_REL" ] || die "loader $LOADER_REL missing after extraction"
[ -x "$STAGE/usr/sbin/criu" ] || die "usr/sbin/criu missing after extraction"

# Every shared object criu and libcompel need must resolve inside the prefix.
for obj in usr/sbin/criu "$LIBDIR_REL/libcompel.so.1"; do
    ldd_out=$("$STAGE/$LOADER_REL" --library-path "$STAGE/$LIBDIR_REL" --list "$STAGE/$obj") ||
        die "ld.so --list $obj failed: $ldd_out"
    if grep -q 'not found' <<<"$ldd_out"; then
        printf '%s\n' "$ldd_out" >&2
        die "$obj: unresolved libraries"
    fi
    outside=$(awk '/=>/ && $3 ~ /^\// { print $3 }' <<<"$ldd_out" | grep -v "^$STAGE/" || true)
    [ -z "$outside" ] || die "$obj resolves libraries outside the prefix: $outside"
done
staged_version=$(criu_version "$STAGE/$LOADER_REL" --library-path "$STAGE/$LIBDIR_REL" "$STAGE/usr/sbin/criu")
[ -n "$staged_version" ] || die "staged criu --version failed"
version_ok "$staged_version" || die "staged criu is $staged_version, not >= $MIN_VERSION"

mkdir -p "$STAGE/bin"
cat >"$STAGE/bin/criu" <<EOF
#!/bin/sh
# Generated by snapckpt scripts/install-criu.sh (v$SCRIPT_VERSION): Debian $SUITE criu
# $CRIU_DEB_VERSION run through its own glibc. exec keeps the pid, all arguments and inherited fds.
exec "$PREFIX/$LOADER_REL" --library-path "$PREFIX/$LIBDIR_REL" "$PREFIX/usr/sbin/criu" "\$@"
EOF
chmod 0755 "$STAGE/bin/criu"
(cd "$WORK/debs" && ls -1 *.deb) >"$STAGE/.snapckpt-criu-packages"
printf 'suite=%s criu=%s\n' "$SUITE" "$CRIU_DEB_VERSION" >"$STAGE/.snapckpt-criu-source"
printf '%s\n' "$STAMP" >"$STAGE/.snapckpt-criu-stamp"

if [ -e "$PREFIX" ] || [ -L "$PREFIX" ]; then
    rm -rf -- "$PREFIX.old.$$"
    mv -- "$PREFIX" "$PREFIX.old.$$"
    mv -- "$STAGE" "$PREFIX"
    rm -rf -- "$PREFIX.old.$$"
else
    mv -- "$STAGE" "$PREFIX"
fi

"$PREFIX/bin/criu" --version >/dev/null || die "$PREFIX/bin/criu --version failed"
log "installed $("$PREFIX/bin/criu" --version | head -n1) into $PREFIX"
run_check
