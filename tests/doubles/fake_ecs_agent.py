#!/usr/bin/env python3
"""A fake ECS container agent introspection API (port 51678 on a real container instance).

    fake_ecs_agent.py [--port 0] [--bind 127.0.0.1] [--cluster NAME] [--arn ARN]
                      [--agent-version STRING] [--no-stdin-watch]

Serves GET /v1/metadata, /v1/tasks (with ?taskarn= / ?dockerid=), /license and the agent's
catch-all "/" (AvailableCommands), plus a /_control API. Prints one JSON line
{"url": …, "control": …} once ready; exits 0 at stdin EOF, SIGTERM or SIGINT.
See README.md (section fake_ecs_agent.py) for the behaviour and its sources.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_VERSION = "Amazon ECS Agent - v1.105.1 (a8b3e7d3)"
# ecs-agent/introspection/server.go: the "/" handler answers every unknown path with this
AVAILABLE_COMMANDS = {"AvailableCommands": ["/v1/metadata", "/v1/tasks", "/license"]}
# an empty v1.TaskResponse as encoding/json renders it (DesiredStatus is omitempty)
EMPTY_TASK = {"Arn": "", "KnownStatus": "", "Family": "", "Version": "", "Containers": None}
LICENSE = ("Amazon Elastic Container Service Container Agent\n"
           "Copyright Amazon.com, Inc. or its affiliates. All Rights Reserved.\n")


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.defaults = {}
        self.reset()

    def reset(self):
        self.cluster = self.defaults.get("cluster", "default")
        self.arn = self.defaults.get("arn")
        self.version = self.defaults.get("version", DEFAULT_VERSION)
        self.tasks = []        # v1.TaskResponse objects, in the order given
        self.faults = []
        self.requests = []


STATE = State()


def task_response(t):
    """Normalizes a control-supplied task to the v1.TaskResponse shape."""
    out = {"Arn": t.get("Arn", ""), "DesiredStatus": t.get("DesiredStatus", "RUNNING"),
           "KnownStatus": t.get("KnownStatus", "RUNNING"), "Family": t.get("Family", ""),
           "Version": str(t.get("Version", "1")), "Containers": t.get("Containers") or []}
    if not out["DesiredStatus"]:
        del out["DesiredStatus"]   # omitempty
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ecs-agent"

    def log_message(self, *a):
        pass

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

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return code

    def _json(self, code, obj, ctype="application/json"):
        # Go's json.Marshal: compact
        return self._send(code, json.dumps(obj, separators=(",", ":")).encode(), ctype)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method):
        u = urllib.parse.urlsplit(self.path)
        raw = self._read_body()
        if u.path == "/_control" or u.path.startswith("/_control/"):
            return self._control(method, u, raw)
        return self._api(method, u, raw)

    # --- control API --------------------------------------------------------------------------
    def _control(self, method, u, raw):
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._json(400, {"error": "body is not JSON"})
        p = u.path
        with STATE.lock:
            if method == "POST" and p == "/_control/metadata":
                if "Cluster" in body:
                    if not isinstance(body["Cluster"], str):
                        return self._json(400, {"error": "Cluster must be a string"})
                    STATE.cluster = body["Cluster"]
                if "ContainerInstanceArn" in body:
                    arn = body["ContainerInstanceArn"]
                    if arn is not None and not isinstance(arn, str):
                        return self._json(400, {"error": "ContainerInstanceArn: string or null"})
                    STATE.arn = arn
                if "Version" in body:
                    STATE.version = str(body["Version"])
                return self._json(200, self._metadata())
            if method == "GET" and p == "/_control/metadata":
                return self._json(200, self._metadata())
            if method == "POST" and p == "/_control/tasks":
                items = body if isinstance(body, list) else [body]
                for t in items:
                    if not isinstance(t, dict) or not isinstance(t.get("Arn"), str):
                        return self._json(400, {"error": "each task needs an Arn (string)"})
                for t in items:
                    STATE.tasks = [x for x in STATE.tasks if x["Arn"] != t["Arn"]]
                    STATE.tasks.append(task_response(t))
                return self._json(200, {"Tasks": STATE.tasks})
            if method == "DELETE" and p == "/_control/tasks":
                STATE.tasks = []
                return self._json(200, {"ok": True})
            if method == "POST" and p == "/_control/faults":
                prefix = body.get("path_prefix")
                status = body.get("status")
                delay = float(body.get("delay_seconds", 0))
                if not isinstance(prefix, str) or (status is None and delay <= 0):
                    return self._json(400, {"error": "path_prefix and status (or delay_seconds) "
                                                     "required"})
                STATE.faults.append({"path_prefix": prefix, "method": body.get("method"),
                                     "status": status, "count": int(body.get("count", 1)),
                                     "delay_seconds": delay, "message": body.get("message"),
                                     "close": bool(body.get("close", False))})
                return self._json(200, {"ok": True})
            if method == "GET" and p == "/_control/faults":
                return self._json(200, STATE.faults)
            if method == "DELETE" and p == "/_control/faults":
                STATE.faults.clear()
                return self._json(200, {"ok": True})
            if method == "GET" and p == "/_control/requests":
                return self._json(200, STATE.requests)
            if method == "DELETE" and p == "/_control/requests":
                STATE.requests.clear()
                return self._json(200, {"ok": True})
            if method == "POST" and p == "/_control/reset":
                STATE.reset()
                return self._json(200, {"ok": True})
        return self._json(404, {"error": "unknown control endpoint"})

    # --- the introspection API ----------------------------------------------------------------
    def _metadata(self):
        # v1.AgentMetadataResponse: ContainerInstanceArn is a *string (null when nil)
        return {"Cluster": STATE.cluster, "ContainerInstanceArn": STATE.arn,
                "Version": STATE.version}

    def _api(self, method, u, raw):
        rec = {"method": method, "path": u.path, "query": u.query,
               "body": raw.decode("utf-8", "replace"), "status": None, "time": time.time()}
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
            if fault["close"]:
                # the connection is dropped without an answer (agent restarting, crash)
                rec["status"] = 0
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            if fault["status"] is not None:
                st = int(fault["status"])
                if fault["message"] is not None:
                    rec["status"] = self._send(st, fault["message"].encode(),
                                               "text/plain; charset=utf-8")
                elif u.path == "/v1/metadata":
                    # AgentMetadataHandler's error path: an empty AgentMetadataResponse
                    rec["status"] = self._json(st, {"Cluster": "", "ContainerInstanceArn": None,
                                                    "Version": ""})
                elif u.path == "/v1/tasks":
                    rec["status"] = self._json(st, {"Tasks": None})
                else:
                    rec["status"] = self._send(st, b"", "text/plain; charset=utf-8")
                return
        rec["status"] = self._route(u)

    def _route(self, u):
        q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        with STATE.lock:
            if u.path == "/v1/metadata":
                return self._json(200, self._metadata())
            if u.path == "/v1/tasks":
                has_docker, has_arn = "dockerid" in q, "taskarn" in q
                if has_docker and has_arn:
                    return self._json(400, EMPTY_TASK)
                if has_arn:
                    arn = q["taskarn"][0]
                    for t in STATE.tasks:
                        if t["Arn"] == arn:
                            return self._json(200, t)
                    return self._json(404, EMPTY_TASK)
                if has_docker:
                    did = q["dockerid"][0]
                    hits = []
                    for t in STATE.tasks:
                        for c in t["Containers"] or []:
                            cid = c.get("DockerId", "")
                            if (len(did) > 12 and cid == did) or (len(did) <= 12 and
                                                                  cid.startswith(did) and did):
                                hits.append(t)
                                break
                    if len(hits) > 1:
                        return self._json(400, EMPTY_TASK)
                    if not hits:
                        return self._json(404, EMPTY_TASK)
                    return self._json(200, hits[0])
                return self._json(200, {"Tasks": STATE.tasks})
            if u.path == "/license":
                return self._send(200, LICENSE.encode(), "text/plain")
            # Go's ServeMux "/" pattern: every other path, any method; written without a
            # Content-Type, which net/http sniffs as text/plain
            return self._json(200, AVAILABLE_COMMANDS, "text/plain; charset=utf-8")


def main():
    ap = argparse.ArgumentParser(description="fake ECS agent introspection API (see README.md)")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--cluster", default="default", help="Cluster (ECS_CLUSTER; default "
                                                         "'default')")
    ap.add_argument("--arn", help="ContainerInstanceArn; omitted = null")
    ap.add_argument("--agent-version", default=DEFAULT_VERSION, help="the Version string")
    ap.add_argument("--no-stdin-watch", action="store_true",
                    help="do not exit at stdin EOF (for running it by hand)")
    args = ap.parse_args()
    STATE.defaults = {"cluster": args.cluster, "arn": args.arn, "version": args.agent_version}
    STATE.reset()

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

    print(json.dumps({"url": base, "control": base + "/_control"}), flush=True)
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
