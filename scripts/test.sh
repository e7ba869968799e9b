#!/usr/bin/env bash
# The whole test suite: unit tests, command-line tests, and end-to-end tests of the built binary
# against the local AWS emulator, a real Zabbix API (6.0, then again 7.0, whose authentication
# differs) and the fluentd and Mackerel doubles; then the release artefacts (scripts/dist.sh: static
# x86_64 and aarch64 binaries, packages, SHA256SUMS), checked by tests/dist.rs, each binary in a
# real scale-in (the aarch64 one under qemu-user). Sets up what it needs first.
# Extra arguments go to `cargo test` (and then the Zabbix 7.0 pass and the artefacts are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
# Room for the debug build (about 3 GB), the release build of two targets (about 2.5 GB), the
# virtualenvs and Zabbix's database. A full disk would show up much later as a linker killed by
# SIGBUS, so say it now.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: $((free_kb / 1024)) MB free under $(pwd); the test suite and the release build need about 8 GB" >&2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if [ "$#" -eq 0 ]; then
  echo "== self-tests of the emulator's realism knobs and of the test doubles"
  .venv/bin/python tests/emulator/check_knobs.py || status=$?
  python3 tests/doubles/check_doubles.py || status=$?
fi
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
  echo "== the Zabbix step and the sweep again, against Zabbix 7.0"
  LASTCALL_ZABBIX_VERSION=7.0 cargo test --locked --test zabbix --test sweep 2>&1 | tee -a "$log" || status=$?
fi
# Zabbix's server and database are not needed any more: their memory goes to the release build
# (two aws-sdk-ec2 compilations side by side take about 20 GiB at their peak).
tests/services/zabbix.sh stop >/dev/null 2>&1 || true
if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
  echo "== the release artefacts (scripts/dist.sh; a release build of two targets when cold)"
  if scripts/dist.sh; then
    LASTCALL_DIST=target/dist cargo test --locked --test dist -- --ignored 2>&1 | tee -a "$log" || status=$?
  else
    status=1
  fi
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
