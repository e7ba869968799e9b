#!/usr/bin/env bash
# The whole test suite: unit tests, command-line tests, and end-to-end tests of the built binary
# against the local AWS emulator. Sets up what it needs first. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo test --locked "$@"
