#!/usr/bin/env python3
"""Self-check of the Zabbix API that tests/services/zabbix.sh starts (stdlib only).

    tests/services/zabbix.sh start | python3 tests/services/zabbix_check.py

Reads the JSON line that `zabbix.sh start` or `status` prints, then walks through what lastcall's
Zabbix step relies on: apiinfo.version without auth, user.login, hostgroup.create + host.create of
a unique host, host.get by technical name, host.delete, host.delete again (-32500), the API token
(body "auth" before 6.4, Bearer header from 6.4), user.logout. Exits 1 on the first failure.
"""

import json
import os
import stat
import sys
import urllib.error
import urllib.request
import uuid

NOT_FOUND = "No permissions to referred object or it does not exist!"


class CheckFailed(Exception):
    pass


class Api:
    def __init__(self, url):
        self.url = url
        self.next_id = 1

    def call(self, method, params, auth=None, bearer=False):
        """One JSON-RPC request; returns the whole response object (result or error)."""
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id}
        self.next_id += 1
        headers = {"Content-Type": "application/json-rpc"}
        if auth is not None:
            if bearer:
                headers["Authorization"] = "Bearer " + auth
            else:
                body["auth"] = auth
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            raise CheckFailed(f"{method}: HTTP {e.code} {e.read()[:200]!r}") from e
        except OSError as e:
            raise CheckFailed(f"{method}: no answer from {self.url}: {e}") from e
        if status != 200:
            raise CheckFailed(f"{method}: HTTP {status}")
        try:
            answer = json.loads(raw)
        except ValueError as e:
            raise CheckFailed(f"{method}: not JSON: {raw[:200]!r}") from e
        if answer.get("id") != body["id"] or ("result" in answer) == ("error" in answer):
            raise CheckFailed(f"{method}: not a JSON-RPC answer to id {body['id']}: {answer}")
        return answer

    def result(self, method, params, auth=None, bearer=False):
        answer = self.call(method, params, auth, bearer)
        if "error" in answer:
            raise CheckFailed(f"{method}: error {answer['error']}")
        return answer["result"]


def main():
    line = sys.stdin.readline()
    try:
        info = json.loads(line)
        url, user, password = info["url"], info["user"], info["password"]
        token_file, expected_version = info["token_file"], info["version"]
    except (ValueError, KeyError, TypeError) as e:
        print(f"FAIL: stdin is not zabbix.sh's JSON line ({e}): {line!r}", file=sys.stderr)
        return 1

    api = Api(url)
    passed = []
    session = None

    def ok(what):
        passed.append(what)
        print(f"ok   {what}")

    def check(condition, what, detail):
        if not condition:
            raise CheckFailed(f"{what}: {detail}")
        ok(what)

    suffix = uuid.uuid4().hex[:12]
    group_name = f"lastcall-check-{suffix}"
    host_name = f"lastcall-check-{suffix}.example"
    try:
        version = api.result("apiinfo.version", {})
        check(version == expected_version, f"apiinfo.version without auth is {version}",
              f"the JSON line says {expected_version}")
        major_minor = tuple(int(p) for p in version.split(".")[:2])
        bearer = major_minor >= (6, 4)  # body "auth" before 6.4; Bearer header from 6.4 (7.2 drops "auth")

        session = api.result("user.login", {"username": user, "password": password})
        check(isinstance(session, str) and len(session) >= 32, "user.login", f"got {session!r}")

        def call(method, params):
            return api.result(method, params, session, bearer)

        groupid = call("hostgroup.create", {"name": group_name})["groupids"][0]
        ok(f"hostgroup.create {group_name} -> {groupid}")
        hostid = call("host.create", {
            "host": host_name,
            "groups": [{"groupid": groupid}],
            "interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "",
                            "port": "10050"}],
        })["hostids"][0]
        ok(f"host.create {host_name} -> {hostid}")

        found = call("host.get", {"filter": {"host": [host_name]}, "output": ["hostid", "host"]})
        check(found == [{"hostid": hostid, "host": host_name}], "host.get by technical name",
              f"got {found}")
        upper = call("host.get", {"filter": {"host": [host_name.upper()]}, "output": ["hostid"]})
        check(upper == [], "host.get is case-sensitive on the technical name", f"got {upper}")

        deleted = call("host.delete", [hostid])
        check(deleted == {"hostids": [hostid]}, "host.delete", f"got {deleted}")

        again = api.call("host.delete", [hostid], session, bearer)
        error = again.get("error", {})
        check(error.get("code") == -32500 and error.get("data") == NOT_FOUND,
              "host.delete again -> -32500 " + json.dumps(NOT_FOUND), f"got {again}")

        mode = stat.S_IMODE(os.stat(token_file).st_mode)
        check(mode == 0o600, "token file is mode 0600", f"mode is {oct(mode)}")
        with open(token_file) as f:
            token = f.read().strip()
        groups = api.result("hostgroup.get", {"output": ["groupid"], "filter": {"name": [group_name]}},
                            token, bearer)
        check(groups == [{"groupid": groupid}],
              f"API token works ({'Bearer header' if bearer else 'body auth'})", f"got {groups}")
        if not bearer:
            # 6.0 ignores the header: a client must not rely on it before 6.4.
            ignored = api.call("hostgroup.get", {"output": ["groupid"], "limit": 1}, token, True)
            check(ignored.get("error", {}).get("code") == -32602,
                  "6.0 ignores the Bearer header (-32602 Not authorized.)", f"got {ignored}")

        call("hostgroup.delete", [groupid])
        ok("hostgroup.delete (clean-up)")

        out = call("user.logout", [])
        check(out is True, "user.logout", f"got {out}")
        dead = api.call("hostgroup.get", {"output": ["groupid"], "limit": 1}, session, bearer)
        session = None
        check(dead.get("error", {}).get("code") == -32602, "the session is gone after logout",
              f"got {dead}")
    except (CheckFailed, KeyError, IndexError, TypeError, OSError) as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
        if session is not None:
            try:
                api.call("user.logout", [], session, bearer)
            except CheckFailed:
                pass
        print(f"{len(passed)} passed, 1 failed")
        return 1
    print(f"{len(passed)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
