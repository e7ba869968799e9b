#!/usr/bin/env bash
# A real Zabbix JSON-RPC API on 127.0.0.1 for lastcall's tests: Debian's zabbix-frontend-php served by
# `php -S`, over a private PostgreSQL cluster. No Zabbix server daemon: the API doesn't need one.
#
#   tests/services/zabbix.sh start|stop|status [--version 6.0|7.0]
#
# `start` and `status` print one JSON line on stdout (url, version, user, password, token_file);
# everything else goes to stderr. Debian bookworm, as root. See tests/services/README.md.
set -euo pipefail

STATE=${ZBX_STATE_DIR:-/tmp/lastcall-zabbix}
# Both below Linux's ephemeral range (32768-60999 by default): the tests' own servers bind port 0
# and their clients' sockets take ports from that range, and one of them once held 55432 (the old
# default) just when PostgreSQL started ("could not bind ... Address already in use").
PORT=${ZBX_PORT:-18080}
PG_PORT=${ZBX_PG_PORT:-15432}
PHP_WORKERS=${ZBX_PHP_WORKERS:-4}
ADMIN_USER=Admin
ADMIN_PASSWORD=zabbix
TOKEN_NAME=lastcall-tests
MARKER='lastcall tests/services/zabbix.sh'
PHP_PACKAGES=(php8.2-cli php8.2-cgi php8.2-pgsql) # -cgi satisfies php8.2's SAPI dependency without apache2
PG_PACKAGE=postgresql-15                          # named only when no initdb is installed (an install upgrades it)

log() { printf 'zabbix.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
usage() {
	sed -n '2,8s/^# \{0,1\}//p' "$0" >&2
	exit 2
}
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

cmd=${1:-}
[ $# -gt 0 ] && shift
version=6.0
version_given=0
while [ $# -gt 0 ]; do
	case $1 in
	--version) [ $# -ge 2 ] || usage; version=$2; version_given=1; shift 2 ;;
	--version=*) version=${1#--version=}; version_given=1; shift ;;
	-h | --help) usage ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done
case $version in
6.0) suite=bookworm ;;
7.0) suite=bookworm-backports ;;
*) die "--version must be 6.0 or 7.0, not '$version'" ;;
esac
case $cmd in start | stop | status) ;; *) usage ;; esac
[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages and runs PostgreSQL as user postgres"
case $PORT$PG_PORT in *[!0-9]*) die "ZBX_PORT and ZBX_PG_PORT must be numbers" ;; esac

mkdir -p "$STATE"
chmod 755 "$STATE" # user postgres must reach $STATE/pg
STATE=$(cd "$STATE" && pwd -P)
PG_DIR=$STATE/pg # owned by postgres: data/, the server log and the Unix socket
PGDATA=$PG_DIR/data
PHP_PGID_FILE=$STATE/php.pgid
PHP_LOG=$STATE/php.log
APT_LOG=$STATE/apt.log
INFO=$STATE/info.json
INSTANCE=$STATE/instance # port, pg_port and version of the running instance
TOKEN_FILE=$STATE/admin.token
RPC=$STATE/rpc.php

# One command at a time per state dir, so tests running in parallel may all call `start`.
exec 9>"$STATE/lock"
flock -w 900 9 || die "another zabbix.sh is still running on $STATE"

### processes ####################################################################################

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Pids in process group $1 (from /proc, so no procps is needed).
group_pids() {
	local want=$1 f line pgrp
	for f in /proc/[0-9]*/stat; do
		{ read -r line <"$f"; } 2>/dev/null || continue # the process may just have gone
		# After the command name (which may hold spaces): state ppid pgrp …
		read -r _ _ pgrp _ <<<"${line##*) }"
		[ "$pgrp" = "$want" ] || continue
		f=${f#/proc/}
		echo "${f%/stat}"
	done
}

# The recorded php -S process group, if it still has a php process in it. php -S workers outlive
# their parent, so the group, not the parent, is what is alive or killed.
php_pgid() {
	local pgid pid comm found=1
	[ -f "$PHP_PGID_FILE" ] || return 1
	pgid=$(<"$PHP_PGID_FILE")
	case $pgid in '' | *[!0-9]*) return 1 ;; esac
	for pid in $(group_pids "$pgid"); do
		comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
		case $comm in php*) found=0 ;; esac
	done
	[ $found = 0 ] && echo "$pgid"
}

stop_php() {
	local pgid
	pgid=$(php_pgid) || {
		rm -f "$PHP_PGID_FILE"
		return 0
	}
	log "stopping php -S (process group $pgid)"
	kill -TERM -- "-$pgid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 -- "-$pgid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$pgid" 2>/dev/null || true
	rm -f "$PHP_PGID_FILE"
}

# PostgreSQL binaries: those of the cluster's major version, else the newest installed.
pg_bin() {
	local d
	if [ -f "$PGDATA/PG_VERSION" ]; then
		d=/usr/lib/postgresql/$(<"$PGDATA/PG_VERSION")/bin
		[ -x "$d/pg_ctl" ] || return 1
		echo "$d"
		return 0
	fi
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	[ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

as_postgres() { (cd / && runuser -u postgres -- "$@" 9>&-); } # fd 9 is our lock: no daemon may keep it

pg_running() {
	local bin
	[ -f "$PGDATA/PG_VERSION" ] && bin=$(pg_bin) || return 1
	as_postgres "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

# The port the running cluster listens on (postmaster.pid line 4).
pg_port() { sed -n 4p "$PGDATA/postmaster.pid"; }

stop_pg() {
	pg_running || return 0
	log "stopping PostgreSQL ($PGDATA)"
	as_postgres "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w -s stop >&2
}

api_url() { echo "http://127.0.0.1:$1/api_jsonrpc.php"; }

# Our instance is running: php group alive, cluster up, API answering on the recorded port.
running() {
	local port
	[ -f "$INSTANCE" ] && [ -f "$INFO" ] && [ -f "$RPC" ] || return 1
	port=$(sed -n 's/^port=//p' "$INSTANCE")
	php_pgid >/dev/null && pg_running && command -v php8.2 >/dev/null &&
		php8.2 "$RPC" version "$(api_url "$port")" >/dev/null 2>&1
}

### packages #####################################################################################

apt_updated=0
apt_update_once() {
	local t0
	[ $apt_updated = 1 ] && return 0
	log "apt-get update"
	t0=$(now)
	apt-get update -q >>"$APT_LOG" 2>&1 || {
		tail -n 20 "$APT_LOG" >&2
		die "apt-get update failed (full log: $APT_LOG)"
	}
	log "updated in $(since "$t0")"
	apt_updated=1
}

installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }

# The URI of the Debian archive that serves bookworm, from this machine's apt sources.
debian_mirror() {
	local f
	{
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
			     if ($(i + 1) == "bookworm") print $i }' "$f"
		done
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -f "$f" ] || continue
			awk 'BEGIN { RS = ""; FS = "\n" }
			{ t = u = s = ""
			  for (i = 1; i <= NF; i++) {
			    if ($i ~ /^Types:/) t = " " substr($i, 7) " "
			    if ($i ~ /^URIs:/) u = substr($i, 6)
			    if ($i ~ /^Suites:/) s = " " substr($i, 8) " "
			  }
			  if (t ~ /[ \t]deb[ \t]/ && s ~ /[ \t]bookworm[ \t]/) { split(u, a, /[ \t]+/); print (a[1] != "" ? a[1] : a[2]) } }' "$f"
		done
	} | head -n 1
}

ensure_backports_source() {
	local mirror list=/etc/apt/sources.list.d/zbx-backports.list
	grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
	mirror=$(debian_mirror)
	[ -n "$mirror" ] || die "no apt source for bookworm found, so bookworm-backports can't be added"
	log "adding bookworm-backports ($list) for Zabbix 7.0"
	printf '# Added by %s: zabbix-frontend-php 7.0 comes from bookworm-backports.\ndeb %s bookworm-backports main\n' \
		"$MARKER" "$mirror" >"$list"
	apt_updated=0
}

# What the machine has enabled at boot (systemd wants links and SysV start links).
boot_entries() {
	local l
	for l in /etc/systemd/system/*.wants/*; do
		[ -e "$l" ] || [ -L "$l" ] && echo "systemd ${l##*/}"
	done
	for l in /etc/rc[2-5].d/S*; do
		[ -e "$l" ] && echo "sysv ${l##*/S[0-9][0-9]}"
	done
	true
}

policy_rc_created=0
cleanup_policy_rc() {
	if [ $policy_rc_created = 1 ] && grep -qs "$MARKER" /usr/sbin/policy-rc.d; then
		rm -f /usr/sbin/policy-rc.d
	fi
}

ensure_packages() {
	local missing=() p fe before kind name t0
	for p in "${PHP_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
	fe=
	if installed zabbix-frontend-php; then fe=$(dpkg-query -W -f='${Version}' zabbix-frontend-php); fi
	case $fe in
	"1:$version".*) ;;
	*)
		[ -n "$fe" ] && log "zabbix-frontend-php $fe is installed; switching to $version from $suite"
		missing+=("zabbix-frontend-php/$suite")
		;;
	esac
	pg_bin >/dev/null || missing+=("$PG_PACKAGE")
	[ ${#missing[@]} = 0 ] && return 0
	[ "$version" = 7.0 ] && ensure_backports_source
	apt_update_once
	# Install without starting or enabling anything: no service may start now or at boot.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# %s: no service starts during its apt-get install\nexit 101\n' "$MARKER" >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy_rc_created=1
	fi
	before=$(boot_entries)
	log "apt-get install ${missing[*]}"
	t0=$(now)
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
		"${missing[@]}" >>"$APT_LOG" 2>&1 || {
		tail -n 30 "$APT_LOG" >&2
		die "apt-get install failed (full log: $APT_LOG)"
	}
	cleanup_policy_rc
	log "installed in $(since "$t0")"
	comm -13 <(echo "$before" | sort -u) <(boot_entries | sort -u) | while read -r kind name; do
		case $kind in
		systemd)
			if command -v deb-systemd-helper >/dev/null; then
				deb-systemd-helper disable "$name" >/dev/null 2>&1 || true
			fi
			rm -f /etc/systemd/system/*.wants/"$name"
			;;
		sysv) update-rc.d "$name" disable >/dev/null 2>&1 || true ;;
		esac
		log "not enabled at boot: $name ($kind; the install had enabled it)"
	done
	installed zabbix-frontend-php || die "zabbix-frontend-php did not install"
}

# schema.sql.gz, images.sql.gz and data.sql.gz from zabbix-server-pgsql, without installing it
# (that would pull in the server daemon and enable zabbix-server.service).
extract_schema() {
	local dir=$STATE/schema/$version tmp deb v f
	SCHEMA_DIR=$dir
	[ -f "$dir/data.sql.gz" ] && return 0
	apt_update_once
	tmp=$(mktemp -d "$STATE/download.XXXXXX")
	log "apt-get download zabbix-server-pgsql/$suite (for its SQL files only)"
	(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "zabbix-server-pgsql/$suite") >>"$APT_LOG" 2>&1 || {
		tail -n 20 "$APT_LOG" >&2
		die "apt-get download zabbix-server-pgsql/$suite failed (full log: $APT_LOG)"
	}
	deb=$(ls "$tmp"/zabbix-server-pgsql_*.deb)
	v=$(dpkg-deb -f "$deb" Version)
	case $v in "1:$version".*) ;; *) die "zabbix-server-pgsql/$suite is $v, not $version" ;; esac
	dpkg-deb -x "$deb" "$tmp/x"
	mkdir -p "$dir"
	for f in schema images data; do
		cp "$tmp/x/usr/share/zabbix-server-pgsql/$f.sql.gz" "$dir/"
	done
	echo "$v" >"$dir/VERSION"
	rm -rf "$tmp"
}

### database #####################################################################################

psql_as() { # USER DB ARGS…
	local user=$1 db=$2
	shift 2
	PGOPTIONS='-c client_min_messages=warning' "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U "$user" -d "$db" "$@"
}

ensure_pg() {
	local t0
	PGBIN=$(pg_bin) || die "no PostgreSQL binaries for the cluster in $PGDATA (PostgreSQL $(cat "$PGDATA/PG_VERSION")); remove $STATE"
	if [ ! -f "$PGDATA/PG_VERSION" ]; then
		log "creating a PostgreSQL cluster in $PGDATA"
		rm -rf "$PG_DIR"
		install -d -o postgres -g postgres -m 700 "$PG_DIR"
		as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N >"$STATE/initdb.log" 2>&1 || {
			cat "$STATE/initdb.log" >&2
			die "initdb failed"
		}
	fi
	if pg_running; then
		PG_PORT=$(pg_port)
		return 0
	fi
	port_answers "$PG_PORT" && die "port $PG_PORT (ZBX_PG_PORT) is already in use"
	t0=$(now)
	as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PG_DIR/postgres.log" -w -t 60 -s start \
		-o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2 || {
		tail -n 20 "$PG_DIR/postgres.log" >&2
		die "PostgreSQL did not start"
	}
	started_pg=1
	log "PostgreSQL up on 127.0.0.1:$PG_PORT in $(since "$t0")"
}

db_exists() { [ "$(psql_as postgres postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'")" = 1 ]; }

# The loaded schema, kept in a template database per Zabbix version; it is loaded only once.
ensure_template() {
	local tpl=$1 loading=${1}_loading dir v t0
	db_exists "$tpl" && return 0
	extract_schema
	dir=$SCHEMA_DIR
	v=$(<"$dir/VERSION")
	psql_as postgres postgres -c "DROP DATABASE IF EXISTS $loading" \
		-c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'zabbix') THEN CREATE ROLE zabbix LOGIN PASSWORD 'zabbix'; END IF; END \$\$" \
		-c "CREATE DATABASE $loading OWNER zabbix"
	log "loading the Zabbix $v schema into $tpl (once; takes a while)"
	t0=$(now)
	zcat "$dir/schema.sql.gz" "$dir/images.sql.gz" "$dir/data.sql.gz" |
		psql_as zabbix "$loading" --single-transaction >/dev/null 2>"$STATE/schema-load.log" || {
		tail -n 20 "$STATE/schema-load.log" >&2
		die "loading the schema failed"
	}
	psql_as postgres postgres -c "ALTER DATABASE $loading RENAME TO $tpl" \
		-c "ALTER DATABASE $tpl WITH ALLOW_CONNECTIONS false IS_TEMPLATE true" \
		-c "COMMENT ON DATABASE $tpl IS 'zabbix-server-pgsql $v schema, loaded by $MARKER'"
	log "schema loaded in $(since "$t0")"
}

### frontend #####################################################################################

# Debian patches the frontend to read /etc/zabbix/zabbix.conf.php; upstream reads conf/ in the web root.
frontend_conf_path() {
	local p
	p=$(sed -n "s/.*CONFIG_FILE_PATH *= *'\([^']*\)'.*/\1/p" "$WEB_ROOT/include/classes/core/CConfigFile.php" | head -n 1)
	case $p in
	/etc/*) echo "$p" ;;
	'') echo /etc/zabbix/zabbix.conf.php ;;
	*) echo "$WEB_ROOT$p" ;;
	esac
}

write_frontend_conf() {
	local conf
	conf=$(frontend_conf_path)
	if [ -e "$conf" ] && ! grep -qs "$MARKER" "$conf"; then
		die "$conf exists and was not written by this script; move it away first"
	fi
	mkdir -p "$(dirname "$conf")"
	cat >"$conf" <<EOF
<?php
// Written by $MARKER (state: $STATE); rewritten at every start.
\$DB['TYPE'] = 'POSTGRESQL';
\$DB['SERVER'] = '127.0.0.1';
\$DB['PORT'] = '$PG_PORT';
\$DB['DATABASE'] = 'zabbix';
\$DB['USER'] = 'zabbix';
\$DB['PASSWORD'] = 'zabbix';
\$DB['SCHEMA'] = '';
\$DB['DOUBLE_IEEE754'] = true;
\$ZBX_SERVER_NAME = 'lastcall-tests';
\$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
EOF
	chmod 644 "$conf"
}

# A small JSON-RPC client in PHP, which is installed anyway (curl and python may not be).
write_rpc_helper() {
	cat >"$RPC" <<'EOF'
<?php
// Written by lastcall tests/services/zabbix.sh.
//   php rpc.php version URL                                      prints apiinfo.version
//   php rpc.php setup URL USER PASSWORD TOKEN_NAME TOKEN_FILE   makes an API token, prints the info line
function rpc($url, $method, $params, $session = null, $bearer = false) {
	$req = ['jsonrpc' => '2.0', 'method' => $method, 'params' => $params, 'id' => 1];
	$headers = "Content-Type: application/json-rpc\r\n";
	if ($session !== null && $bearer) $headers .= "Authorization: Bearer $session\r\n";
	if ($session !== null && !$bearer) $req['auth'] = $session;
	$ctx = stream_context_create(['http' => ['method' => 'POST', 'header' => $headers,
		'content' => json_encode($req), 'timeout' => 10, 'ignore_errors' => true]]);
	$body = @file_get_contents($url, false, $ctx);
	if ($body === false) throw new Exception("$method: no answer from $url");
	$r = json_decode($body, true);
	if (!is_array($r)) throw new Exception("$method: not a JSON-RPC answer: " . substr($body, 0, 300));
	if (isset($r['error'])) throw new Exception("$method: " . json_encode($r['error']));
	return $r['result'];
}
try {
	$url = $argv[2];
	$version = rpc($url, 'apiinfo.version', []);
	if ($argv[1] === 'version') { echo $version, "\n"; exit(0); }
	[, , , $user, $password, $name, $file] = $argv;
	$bearer = version_compare($version, '6.4', '>='); // body "auth" before 6.4, Bearer header from 6.4
	$session = rpc($url, 'user.login', ['username' => $user, 'password' => $password]);
	$call = function ($method, $params, $auth = null) use ($url, &$session, $bearer) {
		return rpc($url, $method, $params, $auth ?? $session, $bearer);
	};
	$userid = $call('user.get', ['output' => ['userid'], 'filter' => ['username' => $user]])[0]['userid'];
	$old = $call('token.get', ['output' => ['tokenid'], 'userids' => [$userid], 'filter' => ['name' => $name]]);
	if ($old) $call('token.delete', array_column($old, 'tokenid'));
	$ids = $call('token.create', ['name' => $name, 'userid' => $userid])['tokenids'];
	$token = $call('token.generate', $ids)[0]['token'];
	$call('hostgroup.get', ['output' => ['groupid'], 'limit' => 1], $token); // the token works
	$call('user.logout', []);
	umask(077);
	if (file_put_contents("$file.tmp", $token) === false || !chmod("$file.tmp", 0600) || !rename("$file.tmp", $file))
		throw new Exception("cannot write $file");
	echo json_encode(['url' => $url, 'version' => $version, 'user' => $user, 'password' => $password,
		'token_file' => $file], JSON_UNESCAPED_SLASHES), "\n";
} catch (Exception $e) {
	fwrite(STDERR, $e->getMessage() . "\n");
	exit(1);
}
EOF
}

start_php() {
	: >"$PHP_LOG"
	rm -f "$PHP_PGID_FILE"
	# setsid: php and its workers get a process group of their own, which `stop` kills whole.
	PHP_CLI_SERVER_WORKERS=$PHP_WORKERS setsid sh -c 'echo $$ >"$0"; exec php8.2 -S "127.0.0.1:$1" -t "$2"' \
		"$PHP_PGID_FILE" "$PORT" "$WEB_ROOT" </dev/null >>"$PHP_LOG" 2>&1 9>&- &
	started_php=1
	for _ in $(seq 100); do
		[ -s "$PHP_PGID_FILE" ] && php8.2 "$RPC" version "$URL" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	tail -n 20 "$PHP_LOG" >&2
	php8.2 "$RPC" version "$URL" >&2 || true
	die "the API did not answer at $URL"
}

### commands #####################################################################################

started_pg=0
started_php=0
on_exit() {
	local rc=$?
	cleanup_policy_rc
	if [ $rc != 0 ] && [ "$cmd" = start ]; then # leave nothing half-started behind
		[ $started_php = 1 ] && stop_php
		[ $started_pg = 1 ] && stop_pg
	fi
	exit $rc
}
trap on_exit EXIT

do_start() {
	local t0 running_port running_version tpl line strategy
	t0=$(now)
	if running; then
		running_port=$(sed -n 's/^port=//p' "$INSTANCE")
		running_version=$(sed -n 's/^version=//p' "$INSTANCE")
		[ "$running_port" = "$PORT" ] || die "already running from $STATE on port $running_port, not $PORT"
		if [ $version_given = 0 ] || [ "$running_version" = "$version" ]; then
			log "already running"
			cat "$INFO"
			return 0
		fi
		# Another version was asked for: switch in place (PostgreSQL stays up; each version has its template).
		log "Zabbix $running_version is running; switching to $version"
	fi
	stop_php # leftovers of an instance that is only half up
	rm -f "$INFO" "$INSTANCE" "$TOKEN_FILE"
	port_answers "$PORT" && die "port $PORT (ZBX_PORT) already answers, and it is not this instance ($STATE)"

	ensure_packages
	WEB_ROOT=$(dirname "$(dpkg -L zabbix-frontend-php | grep '/api_jsonrpc\.php$' | head -n 1)")
	[ -f "$WEB_ROOT/api_jsonrpc.php" ] || die "zabbix-frontend-php has no api_jsonrpc.php"
	ensure_pg
	tpl=zabbix_tpl_${version/./_}
	ensure_template "$tpl"
	# Every start gets a fresh copy of the loaded database: 0.2 s with FILE_COPY (PostgreSQL 15+),
	# about twice that with 15's default WAL_LOG.
	strategy=
	[ "$(psql_as postgres postgres -tAc 'SHOW server_version_num')" -ge 150000 ] && strategy='STRATEGY FILE_COPY'
	psql_as postgres postgres -c "DROP DATABASE IF EXISTS zabbix WITH (FORCE)" \
		-c "CREATE DATABASE zabbix OWNER zabbix TEMPLATE $tpl $strategy"
	write_frontend_conf
	write_rpc_helper
	URL=$(api_url "$PORT")
	port_answers "$PORT" && die "port $PORT (ZBX_PORT) was taken while starting"
	start_php
	line=$(php8.2 "$RPC" setup "$URL" "$ADMIN_USER" "$ADMIN_PASSWORD" "$TOKEN_NAME" "$TOKEN_FILE") ||
		die "could not log in and create an API token at $URL"
	case $line in *"\"version\":\"$version".*) ;; *) die "the API is not Zabbix $version: $line" ;; esac
	echo "$line" >"$INFO"
	printf 'port=%s\npg_port=%s\nversion=%s\n' "$PORT" "$PG_PORT" "$version" >"$INSTANCE"
	log "Zabbix $version ready at $URL in $(since "$t0") (php log: $PHP_LOG)"
	echo "$line"
}

do_stop() {
	stop_php
	stop_pg
	rm -f "$INFO" "$INSTANCE" "$TOKEN_FILE"
	log "stopped"
}

do_status() {
	if running; then
		cat "$INFO"
		return 0
	fi
	local why=()
	php_pgid >/dev/null && why+=("php -S is up") || why+=("php -S is down")
	pg_running && why+=("PostgreSQL is up") || why+=("PostgreSQL is down")
	log "not running ($STATE: ${why[0]}, ${why[1]})"
	return 1
}

case $cmd in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
esac
