#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60) with the nightly toolchain. New inputs
# go to fuzz/corpus/<target> (not in git), crashes to fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in checkpoint_json job_toml template; do
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -max_len=65536
done
