#!/usr/bin/env bash
# Runs every benchmark, one after another, and writes bench/RESULTS.md.
#
#   bench/run.sh           the reference run (about 40 min + the mass departure's): 20 terminations
#                          per latency mode, fleets of 10, 50 and 100, half and all of 100 leaving
#                          at once, 10 min of idle CPU
#   bench/run.sh --quick   a smoke run of a few minutes with tiny sizes
#
# Sets up what it needs: the project virtualenv with the emulator (scripts/setup-test-env.sh), a
# virtualenv of its own for the baseline's AWS CLI v1 (bench/.venv-awscli, pinned), and the Debian
# packages the baseline and the measurements use (time, jq, curl, file) when missing. Builds the
# release binary when it is missing or older than its sources. Not a test: nothing here fails
# on a missed goal; RESULTS.md says which goals are met.
set -euo pipefail
cd "$(dirname "$0")/.."

AWSCLI_VERSION=1.46.2
quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac
start=$(date +%s)
say() { echo "bench: $*" >&2; }

scripts/setup-test-env.sh

missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v file >/dev/null || missing+=(file)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "needs ${missing[*]} (install them and run this again)"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=bench/.venv-awscli
if [ "$(cat "$venv/.version" 2>/dev/null)" != "$AWSCLI_VERSION" ]; then
  say "creating $venv with awscli $AWSCLI_VERSION (AWS CLI v1, the baseline's)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "awscli==$AWSCLI_VERSION"
  echo "$AWSCLI_VERSION" >"$venv/.version"
fi

bin=target/release/lastcall
if [ ! -x "$bin" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$bin" -print -quit)" ]; then
  say "building $bin"
  if ! cargo build --release --locked; then
    # Someone may be in the middle of changing src/: measure the last good build, and say so.
    [ -x "$bin" ] || exit 1
    say "the build failed; measuring the existing $bin (older than src/)"
  fi
fi

py=.venv/bin/python
rm -rf bench/results
if [ "$quick" = 1 ]; then
  "$py" bench/scale_in_latency.py "$bin" --runs 3 --json
  "$py" bench/fleet.py "$bin" --sizes 10 --rounds 1 --idle 10 --round-cap 60 --baseline-fleets 1 --baseline-cap 60 --json
  "$py" bench/idle_footprint.py "$bin" --seconds 60 --rss-seconds 60 --once-runs 5 --json
  mode=quick
else
  "$py" bench/scale_in_latency.py "$bin" --runs 20 --json
  "$py" bench/fleet.py "$bin" --sizes 10,50,100 --rounds 3 --idle 60 --round-cap 120 --baseline-fleets 3 --baseline-cap 600 --json
  # Mass departure (issue 14): half, then all of N = 100 leaving at once, the emulator's realism
  # knobs on. report.py does not render these yet: RESULTS.md's "Mass departure" section is by hand.
  for f in 0.5 1.0; do
    "$py" bench/fleet.py "$bin" --sizes 100 --rounds 2 --idle 10 --round-cap 300 --modes sqs,imds,both --fraction "$f" --realistic --json --name "fleet-mass-$f"
  done
  "$py" bench/idle_footprint.py "$bin" --seconds 600 --rss-seconds 60 --once-runs 20 --json
  mode=full
fi
"$py" bench/report.py "$bin" --mode "$mode" --seconds "$(($(date +%s) - start))"
say "done in $(($(date +%s) - start)) s: bench/RESULTS.md"
