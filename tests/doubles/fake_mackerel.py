#!/usr/bin/env python3
"""Fake Mackerel API (the host subset lastcall uses), stdlib only.

    fake_mackerel.py --port 0
    -> prints {"url":"http://127.0.0.1:PORT","control":"http://127.0.0.1:PORT/_control"}

Behaviour follows the published Mackerel API (the API docs' hosts pages, and
mackerel-client-go). Keys, hosts and injected faults come from the unauthenticated control API
under /_control. The process exits when its stdin reaches EOF (so a dead test harness never
leaves it behind), on SIGTERM and on SIGINT. See tests/doubles/README.md.
"""

import argparse
import json
import os
import secrets
import signal
import string
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ID_ALPHABET = string.digits + string.ascii_letters
STATUSES = ("working", "standby", "maintenance", "poweroff")
BULK_RETIRE_MAX = 30

MSG_AUTH = "Authentication failed. Please try again."
MSG_PERMISSION = "Permission denied: this API key does not have the write permission."
MSG_HOST_NOT_FOUND = "Host Not Found."
MSG_BAD_JSON = "Invalid JSON format."
MSG_NOT_FOUND = "Not Found."
DEFAULT_FAULT_MESSAGES = {
    429: "Too Many Requests.",
    500: "Internal Server Error.",
    502: "Bad Gateway.",
    503: "Service Unavailable.",
    504: "Gateway Timeout.",
}


class State:
    def __init__(self, org):
        self.lock = threading.Lock()
        self.org = org
        self.reset()

    def reset(self):
        self.keys = {}        # key -> can write
        self.hosts = {}       # id -> host dict (insertion order = registration order)
        self.faults = []      # [{"path_prefix", "method", "status", "count", "delay_seconds", ...}]
        self.requests = []    # what /api/ received (never the key itself)


STATE = State("lastcall-test")


def new_host_id():
    while True:
        hid = "".join(secrets.choice(ID_ALPHABET) for _ in range(11))
        if hid not in STATE.hosts:
            return hid


def public_host(h):
    """The host object as the API renders it; optional fields only when set."""
    out = {
        "id": h["id"],
        "name": h["name"],
        "displayName": h.get("displayName"),
        "customIdentifier": h.get("customIdentifier"),
        "type": h.get("type", "agent"),
        "status": h["status"],
        "memo": h.get("memo", ""),
        "isRetired": h["isRetired"],
        "retiredAt": h.get("retiredAt"),
        "roles": h.get("roles", {}),
        "createdAt": h["createdAt"],
        "size": h.get("size", "standard"),
        "meta": h.get("meta", {}),
        "interfaces": h.get("interfaces", []),
    }
    return {k: v for k, v in out.items() if v is not None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-mackerel"

    def log_message(self, *a):
        pass

    # --- plumbing -----------------------------------------------------------------------------
    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, code, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        return code

    def _error(self, code, message, headers=None):
        return self._send(code, {"error": {"message": message}}, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method):
        u = urllib.parse.urlsplit(self.path)
        raw = self._read_body()
        if u.path == "/_control" or u.path.startswith("/_control/"):
            return self._control(method, u, raw)
        if u.path.startswith("/api/"):
            return self._api(method, u, raw)
        return self._error(404, MSG_NOT_FOUND)

    # --- control API (no auth) ----------------------------------------------------------------
    def _control(self, method, u, raw):
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._error(400, MSG_BAD_JSON)
        p = u.path
        with STATE.lock:
            if method == "POST" and p == "/_control/keys":
                key = body.get("key")
                if not isinstance(key, str) or not key:
                    return self._error(400, "key must be a non-empty string")
                STATE.keys[key] = bool(body.get("write", True))
                return self._send(200, {"ok": True})
            if method == "DELETE" and p == "/_control/keys":
                STATE.keys.clear()
                return self._send(200, {"ok": True})
            if method == "POST" and p == "/_control/hosts":
                name = body.get("name")
                status = body.get("status", "working")
                if not isinstance(name, str) or not name or status not in STATUSES:
                    return self._error(400, "name (string) required; status one of "
                                       + ", ".join(STATUSES))
                hid = new_host_id()
                created = body.get("createdAt", int(time.time()))
                if not isinstance(created, int):
                    return self._error(400, "createdAt must be epoch seconds")
                h = {"id": hid, "name": name, "status": status, "isRetired": False,
                     "createdAt": created}
                for k in ("displayName", "customIdentifier", "memo", "roles", "meta",
                          "interfaces", "size", "type"):
                    if k in body:
                        h[k] = body[k]
                STATE.hosts[hid] = h
                return self._send(200, {"id": hid})
            if method == "GET" and p == "/_control/hosts":
                return self._send(200, [public_host(h) for h in STATE.hosts.values()])
            if method == "POST" and p == "/_control/faults":
                prefix = body.get("path_prefix")
                status = body.get("status")
                delay = float(body.get("delay_seconds", 0))
                if not isinstance(prefix, str) or (status is None and delay <= 0):
                    return self._error(400, "path_prefix and status (or delay_seconds) required")
                STATE.faults.append({"path_prefix": prefix, "method": body.get("method"),
                                     "status": status, "count": int(body.get("count", 1)),
                                     "delay_seconds": delay, "message": body.get("message")})
                return self._send(200, {"ok": True})
            if method == "GET" and p == "/_control/faults":
                return self._send(200, STATE.faults)
            if method == "DELETE" and p == "/_control/faults":
                STATE.faults.clear()
                return self._send(200, {"ok": True})
            if method == "GET" and p == "/_control/requests":
                return self._send(200, STATE.requests)
            if method == "DELETE" and p == "/_control/requests":
                STATE.requests.clear()
                return self._send(200, {"ok": True})
            if method == "POST" and p == "/_control/reset":
                STATE.reset()
                return self._send(200, {"ok": True})
        return self._error(404, MSG_NOT_FOUND)

    # --- the Mackerel API ---------------------------------------------------------------------
    def _api(self, method, u, raw):
        key = self.headers.get("X-Api-Key")
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text.strip() else None
            json_ok = bool(text.strip())
        except ValueError:
            parsed, json_ok = None, False
        rec = {"method": method, "path": u.path, "query": u.query,
               "api_key_present": key is not None,
               "content_type": self.headers.get("Content-Type"),
               "body": text, "json": parsed, "status": None, "time": time.time()}
        with STATE.lock:
            STATE.requests.append(rec)
            fault = None
            for f in STATE.faults:
                if f["count"] > 0 and u.path.startswith(f["path_prefix"]) and \
                        (f["method"] is None or f["method"].upper() == method):
                    f["count"] -= 1
                    fault = dict(f)
                    break
            STATE.faults = [f for f in STATE.faults if f["count"] > 0]
        if fault is not None:
            if fault["delay_seconds"] > 0:
                time.sleep(fault["delay_seconds"])
            if fault["status"] is not None:
                st = int(fault["status"])
                headers = {"Retry-After": "1"} if st == 429 else None
                msg = fault["message"] or DEFAULT_FAULT_MESSAGES.get(st, f"Error {st}.")
                rec["status"] = self._error(st, msg, headers)
                return
        rec["status"] = self._api_route(method, u, key, text, parsed, json_ok)

    def _api_route(self, method, u, key, text, parsed, json_ok):
        with STATE.lock:
            if key is None or key not in STATE.keys:
                return self._error(401, MSG_AUTH)
            can_write = STATE.keys[key]
            p = u.path
            q = urllib.parse.parse_qs(u.query, keep_blank_values=True)

            if method == "GET" and p == "/api/v0/org":
                return self._send(200, {"name": STATE.org})

            if method == "GET" and p in ("/api/v0/hosts", "/api/v0/hosts.json"):
                return self._send(200, {"hosts": [public_host(h) for h in self._list(q)]})

            prefix = "/api/v0/hosts-by-custom-identifier/"
            if method == "GET" and p.startswith(prefix) and len(p) > len(prefix):
                ident = urllib.parse.unquote(p[len(prefix):])
                ci = (q.get("caseInsensitive") or ["false"])[0].lower() == "true"
                for h in STATE.hosts.values():
                    cid = h.get("customIdentifier")
                    if h["isRetired"] or cid is None:
                        continue
                    if cid == ident or (ci and cid.casefold() == ident.casefold()):
                        return self._send(200, {"host": public_host(h)})
                return self._error(404, MSG_HOST_NOT_FOUND)

            if method == "POST" and p == "/api/v0/hosts/bulk-retire":
                if not can_write:
                    return self._error(403, MSG_PERMISSION)
                if not json_ok:
                    return self._error(400, MSG_BAD_JSON)
                ids = parsed.get("ids") if isinstance(parsed, dict) else None
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    return self._error(400, "ids must be an array of host ids.")
                if len(ids) > BULK_RETIRE_MAX:
                    return self._error(400, f"The number of ids must be {BULK_RETIRE_MAX} "
                                            "or less.")
                if any(i not in STATE.hosts or STATE.hosts[i]["isRetired"] for i in ids):
                    return self._error(404, MSG_HOST_NOT_FOUND)
                now = int(time.time())
                for i in ids:
                    STATE.hosts[i]["isRetired"] = True
                    STATE.hosts[i]["retiredAt"] = now
                return self._send(200, {"success": True})

            parts = p.split("/")  # ['', 'api', 'v0', 'hosts', id, ...]
            if len(parts) >= 5 and parts[1:4] == ["api", "v0", "hosts"] and parts[4]:
                hid = urllib.parse.unquote(parts[4])
                rest = parts[5:]
                if method == "GET" and not rest:
                    h = STATE.hosts.get(hid)
                    if h is None:
                        return self._error(404, MSG_HOST_NOT_FOUND)
                    return self._send(200, {"host": public_host(h)})
                if method == "POST" and rest == ["retire"]:
                    if not can_write:
                        return self._error(403, MSG_PERMISSION)
                    if not json_ok:
                        return self._error(400, MSG_BAD_JSON)
                    h = STATE.hosts.get(hid)
                    # A retired host is gone from the active API: retiring it again is a 404
                    # (inference; Mackerel does not document it).
                    if h is None or h["isRetired"]:
                        return self._error(404, MSG_HOST_NOT_FOUND)
                    h["isRetired"] = True
                    h["retiredAt"] = int(time.time())
                    return self._send(200, {"success": True})
            return self._error(404, MSG_NOT_FOUND)

    @staticmethod
    def _list(q):
        statuses = q.get("status") or ["working", "standby"]
        service = (q.get("service") or [None])[0]
        roles = q.get("role") or []
        name = (q.get("name") or [None])[0]
        cid = (q.get("customIdentifier") or [None])[0]
        out = []
        for h in STATE.hosts.values():
            if h["isRetired"] or h["status"] not in statuses:
                continue
            if name is not None and h["name"] != name:
                continue
            if cid is not None and h.get("customIdentifier") != cid:
                continue
            if service is not None:
                svc_roles = (h.get("roles") or {}).get(service)
                if svc_roles is None:
                    continue
                if roles and not set(roles) & set(svc_roles):
                    continue
            out.append(h)
        return out


def main():
    ap = argparse.ArgumentParser(description="fake Mackerel API (see README.md)")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--org", default="lastcall-test", help="organization name for /api/v0/org")
    ap.add_argument("--no-stdin-watch", action="store_true",
                    help="do not exit at stdin EOF (for running it by hand)")
    args = ap.parse_args()
    STATE.org = args.org

    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGINT, lambda *a: os._exit(0))

    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    base = f"http://{args.bind}:{srv.server_address[1]}"

    if not args.no_stdin_watch:
        def watch_stdin():
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except Exception:
                pass
            os._exit(0)
        threading.Thread(target=watch_stdin, daemon=True).start()

    # ready line last: once it is read, the signal handlers and the stdin watch are in place
    print(json.dumps({"url": base, "control": base + "/_control"}), flush=True)
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
