#!/usr/bin/env bash
# The demo: an Auto Scaling group of three instances on the local AWS emulator, a lastcall
# daemon on each, a scale-in, and the timeline of what the terminated instance's lastcall did.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo build --locked --quiet
exec .venv/bin/python scripts/demo.py target/debug/lastcall "$@"
