# shellcheck shell=sh
# lastcall's %post ($1: 1 on an install, 2 on an upgrade): creates the state directory (the
# journal and the locks). The units are installed but not enabled:
# `systemctl enable --now lastcall.service`, or lastcall-once.timer.

# 0700: the journal names the instance's actions. An existing directory is left as it is.
if [ ! -d /var/lib/lastcall ]; then
  mkdir -p /var/lib
  mkdir -m 0700 /var/lib/lastcall
fi
# Unit files changed by an upgrade take effect at the next start of the unit. A running daemon is
# not restarted: it may be in the middle of an instance's termination.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
fi
