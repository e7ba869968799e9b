# shellcheck shell=sh
# lastcall's %postun ($1: 0 on an erase, 1 on an upgrade). The state directory /var/lib/lastcall is
# kept, as rpm keeps a changed config (as lastcall.toml.rpmsave).
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
fi
