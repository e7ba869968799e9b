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
# Each stage's fate, printed at the end: a stage that did not run says so and why (before, a
# failing `cargo test` binary ended the run there and the later stages were skipped without a
# word, while the closing count could still say "0 failed").
stages=()
stage() { # stage NAME COMMAND...: runs it, notes ok or failed
  local name=$1
  shift
  if "$@"; then
    stages+=("ok       $name")
  else
    stages+=("FAILED   $name")
    status=1
  fi
}
skip() { stages+=("skipped  $1 ($2)"); }
# A cargo test run whose output also goes to the log (for the closing count). These functions
# are called through `stage`.
# shellcheck disable=SC2317
cargo_test() {
  cargo test --locked --no-fail-fast "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}
# shellcheck disable=SC2317
zabbix_7() { LASTCALL_ZABBIX_VERSION=7.0 cargo_test --test zabbix --test sweep; }
# shellcheck disable=SC2317
dist_tests() { LASTCALL_DIST=target/dist cargo_test --test dist -- --ignored; }
if [ "$#" -eq 0 ]; then
  echo "== self-tests of the emulator's realism knobs, the fault proxy and the test doubles"
  stage "emulator knobs self-test" .venv/bin/python tests/emulator/check_knobs.py
  stage "fault proxy self-test" .venv/bin/python tests/faults/check_proxy.py --quick
  stage "test doubles self-test" python3 tests/doubles/check_doubles.py
else
  skip "self-tests" "arguments given"
fi
# --no-fail-fast: every test binary runs, whichever fails.
stage "cargo test (Zabbix ${LASTCALL_ZABBIX_VERSION:-6.0})" cargo_test "$@"
if [ "$#" -eq 0 ]; then
  echo "== the Zabbix step and the sweep again, against Zabbix 7.0"
  stage "Zabbix 7.0: tests/zabbix.rs, tests/sweep.rs" zabbix_7
else
  skip "Zabbix 7.0 pass" "arguments given"
fi
# Zabbix's server and database are not needed any more: their memory goes to the release build
# (two aws-sdk-ec2 compilations side by side take about 20 GiB at their peak).
tests/services/zabbix.sh stop >/dev/null 2>&1 || true
if [ "$#" -eq 0 ]; then
  echo "== the release artefacts (scripts/dist.sh; a release build of two targets when cold)"
  if scripts/dist.sh; then
    stages+=("ok       release artefacts built (scripts/dist.sh)")
    stage "release artefacts: tests/dist.rs" dist_tests
  else
    stages+=("FAILED   release artefacts built (scripts/dist.sh)")
    skip "release artefacts: tests/dist.rs" "scripts/dist.sh failed"
    status=1
  fi
else
  skip "release artefacts" "arguments given"
fi
echo "== stages"
printf '  %s\n' "${stages[@]}"
# One closing line for the whole run, summed over every test binary; a failed stage counts as a
# failure even when no test line says so (a build error, a self-test).
awk -v st="$status" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { if (st != 0 && f == 0) f = 1; printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
