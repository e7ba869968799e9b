#!/usr/bin/env bash
# Runs the fuzz targets (the message parser and router; the config parser) for SECONDS each
# (default 600), growing fuzz/corpus/. Not part of CI. Needs cargo-fuzz (`cargo install
# cargo-fuzz --locked`); on a stable toolchain the sanitizer flags need RUSTC_BOOTSTRAP=1.
# A crash is saved under fuzz/artifacts/ and should become a regression test.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in message config; do
  echo "== fuzzing $target for ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=300000 -print_final_stats=1
done
