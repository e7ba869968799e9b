#!/usr/bin/env bash
# The demo: an Auto Scaling group of three instances on the local AWS emulator, a lastcall
# daemon on each, a scale-in, and the timeline of what the terminated instance's lastcall did.
# It sets up only what it needs (the emulator's virtualenv, the build, a Zabbix API); the test
# suite's tools (packaging, linters) are scripts/setup-test-env.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "demo: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "setting up the AWS emulator's Python environment (about a minute, the first time only)"
fi
scripts/setup-demo-env.sh
if [ ! -x target/debug/lastcall ]; then
  say "building lastcall (about 5 minutes on 2 cores the first time; seconds after that)"
else
  say "building lastcall (seconds, unless the sources changed)"
fi
cargo build --locked --quiet
exec .venv/bin/python scripts/demo.py target/debug/lastcall "$@"
