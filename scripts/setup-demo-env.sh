#!/usr/bin/env bash
# Sets up what the demo needs besides Rust: a project-local Python virtualenv (.venv) with the
# pinned AWS emulator (moto) from tests/emulator/requirements.txt (python3-venv from Debian when
# the system Python lacks it). The demo's Zabbix is set up by tests/services/zabbix.sh when the
# demo starts it. The test suite needs more: scripts/setup-test-env.sh runs this, then the rest.
# Safe to run again: it does nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-lib.sh
. scripts/setup-lib.sh

pinned_venv .venv tests/emulator/requirements.txt "the pinned emulator (moto; about a minute)"
