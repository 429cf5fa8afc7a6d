#!/usr/bin/env bash
# Build snapckpt and install it: the binary, the man pages, the shell completions and the
# systemd units for periodic checkpoints.
#   PREFIX   (default /usr/local)  binary in $PREFIX/bin, man pages in $PREFIX/share/man/man1,
#            completions in $PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}
#   DESTDIR  (default empty)       staged install root (packaging, tests)
#   UNITDIR  (default /etc/systemd/system)
# Then, per job: put the job file at /etc/snapckpt/jobs/JOB.toml and
#   systemctl daemon-reload && systemctl enable --now snapckpt-take@JOB.timer
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-/etc/systemd/system}
BIN=${SNAPCKPT_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=target/release/snapckpt
fi
root=$DESTDIR$PREFIX
install -D -m 0755 "$BIN" "$root/bin/snapckpt"
mkdir -p "$root/share/man/man1"
"$BIN" man --dir "$root/share/man/man1"
install -d "$root/share/bash-completion/completions" "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d"
"$BIN" completions bash > "$root/share/bash-completion/completions/snapckpt"
"$BIN" completions zsh > "$root/share/zsh/site-functions/_snapckpt"
"$BIN" completions fish > "$root/share/fish/vendor_completions.d/snapckpt.fish"
# the units name /usr/local/bin/snapckpt: point them at this prefix
for u in snapckpt-take@.service snapckpt-take@.timer; do
  install -D -m 0644 "config/systemd/$u" "$DESTDIR$UNITDIR/$u"
  sed -i "s|/usr/local/bin/snapckpt|$PREFIX/bin/snapckpt|g" "$DESTDIR$UNITDIR/$u"
done
install -d -m 0755 "$DESTDIR/etc/snapckpt/jobs" "$DESTDIR/etc/snapckpt/hooks.d"
echo "installed snapckpt into $root (units in $DESTDIR$UNITDIR)"
