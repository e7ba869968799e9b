#!/bin/sh
# Installs lastcall on an EC2 instance (any systemd host, x86_64 or aarch64): the binary, its
# systemd units and its config, then enables the daemon or the timer. Safe to run again (an upgrade
# or a config change): files are replaced atomically and the unit is restarted.
#
# Parameters, as environment variables:
#   LASTCALL_URL         the release tarball (…-TARGET.tar.gz) or the bare binary: https://HOST/PATH
#                        (curl or wget), s3://BUCKET/KEY (`aws s3 cp`, with the instance's role)
#                        or file:///PATH. `{arch}` in it becomes x86_64 or aarch64 (`uname -m`;
#                        other architectures are refused)
#   LASTCALL_SHA256      its SHA-256 in hex, or SHA256SUMS's lines ("HASH  NAME"; the one naming
#                        the URL's file is used) (required): a mismatch installs nothing
#   LASTCALL_CONFIG      the text of the config file (/etc/lastcall/lastcall.toml), or
#   LASTCALL_CONFIG_SSM  the name of an SSM parameter holding it (SecureString allowed), fetched with
#                        `aws ssm get-parameter --with-decryption`
#                        (neither: keep the config already there, e.g. baked into the image)
#   LASTCALL_MODE        daemon (default): lastcall.service runs `lastcall run`; or
#                        timer: lastcall-once.timer runs `lastcall once` every minute
#   LASTCALL_SWEEP       1 or true: also enable lastcall-sweep.timer (`lastcall sweep` hourly: the
#                        config needs a [sweep] table, the role ec2:DescribeInstances); 0 or false
#                        (default): disable it
#   LASTCALL_ROOT        install under this directory instead of / (default /), for tests and image
#                        builds: every file is written under it, the unit is enabled with
#                        `systemctl --root` and nothing is started or reached over the network
#                        except LASTCALL_URL.
#
# The config is validated with `lastcall check --offline` before anything is installed; on a real
# root, the online `lastcall check` runs after the install and only warns when it fails (the queue
# or the role may not be ready yet). The aws CLI is needed only for s3:// and SSM; Amazon Linux
# 2023 has it, on Ubuntu install it first (`snap install aws-cli --classic`).
#
# The units below are copies of deploy/systemd/ in the lastcall repository, kept in step by its
# tests/deploy/sync_copies.py (tests/deploy.rs checks that the installed units match byte for byte).
set -eu

say() { printf 'lastcall-install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

url=${LASTCALL_URL:-}
sha=${LASTCALL_SHA256:-}
config_text=${LASTCALL_CONFIG:-}
config_ssm=${LASTCALL_CONFIG_SSM:-}
mode=${LASTCALL_MODE:-daemon}
sweep=${LASTCALL_SWEEP:-0}
root=${LASTCALL_ROOT:-/}
# lastcall itself reads LASTCALL_CONFIG as the config file's path: keep the text from reaching it.
unset LASTCALL_CONFIG

[ -n "$url" ] || die "LASTCALL_URL is not set"
case $url in
  *'{arch}'*)
    machine=$(uname -m)
    case $machine in
      x86_64|amd64) arch=x86_64 ;;
      aarch64|arm64) arch=aarch64 ;;
      *) die "no lastcall build for this machine's architecture '$machine' (there are x86_64 and aarch64)" ;;
    esac
    url=$(printf '%s' "$url" | sed "s/{arch}/$arch/g")
    ;;
esac
file=${url%%\?*}
file=${file##*/}
# One hash, or SHA256SUMS's "HASH  NAME" lines (NAME is "*NAME" in sha256sum's binary mode).
set -f
# shellcheck disable=SC2086 # split on purpose (and not globbed): the words of SHA256SUMS
set -- $sha
set +f
if [ "$#" -gt 1 ]; then
  sha=
  while [ "$#" -ge 2 ]; do
    if [ "${2#\*}" = "$file" ]; then
      sha=$1
      break
    fi
    shift 2
  done
  [ -n "$sha" ] || die "LASTCALL_SHA256 has no line for $file (the lines of SHA256SUMS name each artefact)"
fi
sha=$(printf '%s' "$sha" | tr 'A-F' 'a-f')
case $sha in
  *[!0-9a-f]*|'') die "LASTCALL_SHA256 must be the artefact's SHA-256 in hex, or the lines of SHA256SUMS" ;;
esac
[ "${#sha}" -eq 64 ] || die "LASTCALL_SHA256 must be 64 hex digits"
case $mode in
  daemon) unit=lastcall.service other=lastcall-once.timer ;;
  timer) unit=lastcall-once.timer other=lastcall.service ;;
  *) die "LASTCALL_MODE must be daemon or timer, not '$mode'" ;;
esac
case $sweep in
  1|true) sweep=1 ;;
  0|false) sweep=0 ;;
  *) die "LASTCALL_SWEEP must be 0 or 1 (or false or true), not '$sweep'" ;;
esac
case $root in
  /*) ;;
  *) die "LASTCALL_ROOT must be an absolute path" ;;
esac
[ -z "$config_text" ] || [ -z "$config_ssm" ] || die "set LASTCALL_CONFIG or LASTCALL_CONFIG_SSM, not both"
# $prefix is empty for a real install, else the scratch root without its trailing slash.
prefix=${root%/}
if [ -z "$prefix" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or set LASTCALL_ROOT to install under a directory)"
fi

bin=$prefix/usr/bin/lastcall
conf_dir=$prefix/etc/lastcall
conf=$conf_dir/lastcall.toml
unit_dir=$prefix/etc/systemd/system

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The aws CLI needs a region; on EC2 it is the instance's own (from IMDSv2).
aws_region() {
  if [ -z "${AWS_REGION:-}${AWS_DEFAULT_REGION:-}" ]; then
    token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
      http://169.254.169.254/latest/api/token) || die "cannot reach instance metadata for the region"
    AWS_DEFAULT_REGION=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" \
      http://169.254.169.254/latest/meta-data/placement/region) || die "cannot read the region from instance metadata"
    export AWS_DEFAULT_REGION
  fi
  command -v aws >/dev/null || die "the aws CLI is needed for $1 (Ubuntu: snap install aws-cli --classic)"
}

# 1. The binary, verified before anything is written or unpacked.
# Logged without its query string, which may hold a presigned URL's credentials.
shown=${url%%\?*}
say "fetching $shown"
case $url in
  https://*)
    if command -v curl >/dev/null; then
      curl -fsSL --proto '=https' --retry 5 --retry-connrefused -o "$tmp/artefact" "$url" || die "cannot download $shown"
    else
      wget -q --https-only -O "$tmp/artefact" "$url" || die "cannot download $shown"
    fi
    ;;
  s3://*)
    aws_region "$shown"
    aws s3 cp --only-show-errors "$url" "$tmp/artefact" || die "cannot copy $shown"
    ;;
  file://*) cp "${url#file://}" "$tmp/artefact" || die "cannot read $shown" ;;
  *) die "LASTCALL_URL must start with https://, s3:// or file://" ;;
esac
actual=$(sha256sum <"$tmp/artefact")
actual=${actual%% *}
[ "$actual" = "$sha" ] || die "SHA-256 mismatch for $shown: expected $sha, got $actual; nothing installed"
case $file in
  *.tar.gz|*.tgz)
    # The release tarball: lastcall-VERSION-TARGET/lastcall.
    mkdir "$tmp/unpacked"
    tar -xzf "$tmp/artefact" -C "$tmp/unpacked" || die "cannot unpack $file"
    found=$(find "$tmp/unpacked" -mindepth 2 -maxdepth 2 -type f -name lastcall)
    if [ -z "$found" ] || [ "$(printf '%s\n' "$found" | wc -l)" -ne 1 ]; then
      die "$file does not hold one lastcall-*/lastcall"
    fi
    mv "$found" "$tmp/lastcall"
    rm -rf "$tmp/unpacked" "$tmp/artefact"
    ;;
  *) mv "$tmp/artefact" "$tmp/lastcall" ;;
esac
chmod 0755 "$tmp/lastcall"

# 2. The config, validated before anything is written.
if [ -n "$config_ssm" ]; then
  say "reading the config from SSM parameter $config_ssm"
  aws_region "LASTCALL_CONFIG_SSM"
  aws ssm get-parameter --with-decryption --name "$config_ssm" --query Parameter.Value \
    --output text >"$tmp/lastcall.toml" || die "cannot read SSM parameter $config_ssm"
elif [ -n "$config_text" ]; then
  # $(...) drops trailing newlines, so that the file ends in exactly one.
  config_text=$(printf '%s' "$config_text")
  printf '%s\n' "$config_text" >"$tmp/lastcall.toml"
elif [ -f "$conf" ]; then
  say "keeping the config in $conf"
  cp "$conf" "$tmp/lastcall.toml"
else
  die "no config: set LASTCALL_CONFIG or LASTCALL_CONFIG_SSM"
fi
if ! "$tmp/lastcall" --version >/dev/null 2>&1; then
  die "the binary from $shown does not run on this $(uname -m) machine (the wrong architecture's build?); nothing installed"
fi
"$tmp/lastcall" --config "$tmp/lastcall.toml" check --offline >&2 || die "the config is not valid; nothing installed"

# 3. The units.
mkdir "$tmp/units"
# --- BEGIN units: copies of deploy/systemd/, written by tests/deploy/sync_copies.py ---
cat >"$tmp/units/lastcall.service" <<'UNIT_END'
# lastcall daemon: watches for this instance's termination and runs the pre-shutdown steps.
# Installed by the .deb/.rpm in /usr/lib/systemd/system/ (not enabled); by hand, copy it to
# /etc/systemd/system/. Then `systemctl daemon-reload && systemctl enable --now lastcall`.
# For `lastcall once` from a timer instead, see lastcall-once.timer (both at once are safe too).
[Unit]
Description=lastcall: pre-shutdown steps for EC2 Auto Scaling terminations
Wants=network-online.target
After=network-online.target
# Started before the agents it stops, so that it is stopped after them at shutdown.
Before=fluentd.service td-agent.service zabbix-agent.service zabbix-agent2.service mackerel-agent.service
# Never give up restarting: a config written later (by user-data or config management) is picked
# up by the next restart.
StartLimitIntervalSec=0

[Service]
Type=exec
ExecStartPre=/usr/bin/lastcall check --offline
ExecStart=/usr/bin/lastcall run
Restart=always
RestartSec=5s
# SIGTERM goes to lastcall only: a running step is allowed to finish (up to its own timeout, 2 min
# by default) and the journal keeps the rest for the next start. Whatever is left is killed after
# TimeoutStopSec, which must exceed the longest step timeout in the config.
KillMode=mixed
TimeoutStopSec=15min
StateDirectory=lastcall
StateDirectoryMode=0700

[Install]
WantedBy=multi-user.target
UNIT_END
cat >"$tmp/units/lastcall-once.service" <<'UNIT_END'
# One check by lastcall (`lastcall once`): handle this instance's termination if there is one, then
# exit. Started every minute by lastcall-once.timer; enable the timer, not this unit:
# `systemctl enable --now lastcall-once.timer`. Safe alongside the daemon (one lock per action).
[Unit]
Description=lastcall: one check for an EC2 Auto Scaling termination
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
# A termination found here runs the whole pipeline, heartbeating, for as long as the steps take;
# the timer starts no second run while this one is active.
ExecStart=/usr/bin/lastcall once
# As for the daemon: a SIGTERM lets a running step finish; the rest is resumed by the next run.
KillMode=mixed
TimeoutStopSec=15min
StateDirectory=lastcall
StateDirectoryMode=0700
UNIT_END
cat >"$tmp/units/lastcall-once.timer" <<'UNIT_END'
# Runs `lastcall once` (lastcall-once.service) every minute: the alternative to the daemon for
# hosts that prefer no resident process. Enable with `systemctl enable --now lastcall-once.timer`.
[Unit]
Description=lastcall: check for an EC2 Auto Scaling termination every minute

[Timer]
OnCalendar=minutely
# Run at once after boot when a start was missed while the instance was down.
Persistent=true
# A few seconds of spread so that a whole group does not poll the queue in the same second, and
# accuracy to match (the default, one minute, would postpone runs by up to a minute).
RandomizedDelaySec=10s
AccuracySec=1s

[Install]
WantedBy=timers.target
UNIT_END
cat >"$tmp/units/lastcall-sweep.service" <<'UNIT_END'
# One sweep by lastcall (`lastcall sweep`): retire/delete the monitoring hosts of this group's
# instances that died without running their steps (see [sweep] in the config). Started hourly by
# lastcall-sweep.timer; enable the timer, not this unit: `systemctl enable --now
# lastcall-sweep.timer`. Every instance of the group may run it: removing a removed host is success.
[Unit]
Description=lastcall: remove the monitoring hosts of instances that are gone
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/lastcall sweep
# The sweep's own API calls end within 5 minutes (EC2 calls have their own timeouts).
TimeoutStartSec=15min
StateDirectory=lastcall
StateDirectoryMode=0700
# Only a sweep: it never competes with a termination's steps for the CPU.
Nice=10
UNIT_END
cat >"$tmp/units/lastcall-sweep.timer" <<'UNIT_END'
# Runs `lastcall sweep` (lastcall-sweep.service) every hour, at a random moment within it, so that
# a whole group does not ask EC2, Mackerel and Zabbix in the same second. Enable with
# `systemctl enable --now lastcall-sweep.timer` (the installer's LASTCALL_SWEEP=1 does).
[Unit]
Description=lastcall: remove the monitoring hosts of instances that are gone, hourly

[Timer]
OnCalendar=hourly
RandomizedDelaySec=1h
# The first sweep a while after boot, not at once: a new instance has other work then.
OnBootSec=15min
Persistent=false

[Install]
WantedBy=timers.target
UNIT_END
# --- END units ---

# 4. Install: each file through a temporary name beside it and a rename, so that a running lastcall
# or systemd never reads half a file.
put() { # SOURCE TARGET MODE
  new="${2%/*}/.${2##*/}.new"
  cp "$1" "$new"
  chmod "$3" "$new"
  if [ "$(id -u)" = 0 ]; then chown 0:0 "$new"; fi
  mv -f "$new" "$2"
}
# The config's temporary copy is 0600 like its source, so it is never readable by others.
umask 022
mkdir -p "$prefix/usr/bin" "$unit_dir" "$conf_dir"
put "$tmp/lastcall" "$bin" 0755
put "$tmp/lastcall.toml" "$conf" 0600
for u in lastcall.service lastcall-once.service lastcall-once.timer lastcall-sweep.service lastcall-sweep.timer; do
  put "$tmp/units/$u" "$unit_dir/$u" 0644
done
say "installed $bin, $conf and the units in $unit_dir"

# 5. Enable (and on a real root start) the daemon or the timer, and disable the other one.
if [ "$sweep" = 1 ]; then
  if [ -n "$prefix" ]; then
    systemctl --root="$prefix" enable lastcall-sweep.timer
  else
    systemctl daemon-reload
    systemctl enable --now lastcall-sweep.timer
  fi
  say "enabled lastcall-sweep.timer"
elif [ -n "$prefix" ]; then
  systemctl --root="$prefix" disable lastcall-sweep.timer >/dev/null 2>&1 || true
else
  systemctl disable --now lastcall-sweep.timer >/dev/null 2>&1 || true
fi
if [ -n "$prefix" ]; then
  systemctl --root="$prefix" disable "$other" >/dev/null 2>&1 || true
  systemctl --root="$prefix" enable "$unit"
  say "enabled $unit under $prefix"
else
  if ! "$bin" check >&2; then
    say "warning: the online check failed (above); lastcall keeps retrying once started"
  fi
  systemctl daemon-reload
  systemctl disable --now "$other" >/dev/null 2>&1 || true
  systemctl enable "$unit"
  systemctl restart "$unit"
  say "enabled and started $unit"
fi
