#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for lastcall's tests (Python 3 standard library only).

    python3 tests/faults/proxy.py --upstream http://127.0.0.1:PORT [--port 0] [--host 127.0.0.1]

It forwards every request to the upstream and the answer back, and injects
failures (an error answer, a connection reset, a hang, a delay) on chosen
calls.  When it listens it prints one JSON line to stdout:

    {"url":"http://127.0.0.1:PORT","control":"http://127.0.0.1:PORT/_faults"}

It exits when stdin reaches EOF (start it with stdin piped and keep the pipe
open) and on SIGTERM/SIGINT.  See README.md next to this file for the control
API and the error formats.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONTROL_PREFIX = "/_faults"

# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded; Content-Length is
# recomputed; Host is set for the upstream; Expect was already handled here.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
SKIP_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect"}
SKIP_RESPONSE = HOP_BY_HOP | {"content-length"}

# SQS is JSON protocol with the awsQueryCompatible trait: errors carry the
# *query* error code in `x-amzn-query-error: CODE;Sender|Receiver` (that is the
# code aws-sdk-sqs and botocore report) and the Smithy shape name in __type.
# Query code -> shape name, where they differ (from aws-sdk-sqs 1.119's
# generated deserializers); any other code is its own shape name.
SQS_SHAPES = {
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct": "BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.BatchRequestTooLong": "BatchRequestTooLong",
    "AWS.SimpleQueueService.EmptyBatchRequest": "EmptyBatchRequest",
    "AWS.SimpleQueueService.InvalidBatchEntryId": "InvalidBatchEntryId",
    "AWS.SimpleQueueService.NonExistentQueue": "QueueDoesNotExist",
    "AWS.SimpleQueueService.PurgeQueueInProgress": "PurgeQueueInProgress",
    "AWS.SimpleQueueService.QueueDeletedRecently": "QueueDeletedRecently",
    "AWS.SimpleQueueService.UnsupportedOperation": "UnsupportedOperation",
    "KMS.AccessDeniedException": "KmsAccessDenied",
    "KMS.DisabledException": "KmsDisabled",
    "KMS.InvalidKeyUsageException": "KmsInvalidKeyUsage",
    "KMS.InvalidStateException": "KmsInvalidState",
    "KMS.NotFoundException": "KmsNotFound",
    "KMS.OptInRequired": "KmsOptInRequired",
    "KMS.ThrottlingException": "KmsThrottled",
    "QueueAlreadyExists": "QueueNameExists",
}
# JSON-protocol target prefix -> (Smithy namespace, query compatible?)
JSON_NAMESPACES = {"AmazonSQS": ("com.amazonaws.sqs", True)}
# Query-protocol API versions, for requests without a SigV4 credential scope.
QUERY_VERSIONS = {"2011-01-01": "autoscaling", "2016-11-15": "ec2", "2012-11-05": "sqs"}

ACTIONS = ("error", "reset", "hang", "delay")
RULE_KEYS = {
    "match", "method", "service", "action", "status", "code", "message", "type", "count",
    "seconds", "hang_seconds", "delay_seconds", "forward", "body", "content_type", "headers", "data",
}
MAX_HANG = 3600.0  # a hang without hang_seconds lasts until the client gives up (or this)

VERBOSE = False


def log(msg: str) -> None:
    if VERBOSE:
        sys.stderr.write(f"faults-proxy: {msg}\n")
        sys.stderr.flush()


class BadRule(ValueError):
    pass


# ---------------------------------------------------------------------------
# Rules and the request log
# ---------------------------------------------------------------------------
class Rule:
    def __init__(self, rule_id: int, spec: Any):
        if not isinstance(spec, dict):
            raise BadRule("a rule is a JSON object")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise BadRule(f"unknown rule keys: {sorted(unknown)}")
        match = spec.get("match")
        if not isinstance(match, str) or not match:
            raise BadRule('"match" (an operation name, a path, or "*") is required')
        action = spec.get("action", "error")
        if action not in ACTIONS:
            raise BadRule(f'"action" must be one of {list(ACTIONS)}')
        self.id = rule_id
        self.spec = dict(spec)
        self.match = match
        self.method = _opt_str(spec, "method")
        self.method = self.method.upper() if self.method else None
        self.service = _opt_str(spec, "service")
        self.action = action
        code = spec.get("code")
        if code is not None and not isinstance(code, (str, int)):
            raise BadRule('"code" must be a string (or a number for JSON-RPC)')
        self.code = code
        self.status = _opt_int(spec, "status", 100, 599)
        if self.status is None:
            self.status = 400 if code is not None and action == "error" else 500
        self.message = _opt_str(spec, "message")
        self.type = _opt_str(spec, "type")
        if self.type is not None and self.type not in ("Sender", "Receiver"):
            raise BadRule('"type" must be "Sender" or "Receiver"')
        seconds = _opt_num(spec, "seconds")
        count = _opt_int(spec, "count", 0, None)
        # count defaults to 1, but a time window alone means "every call in the window".
        self.count = count if count is not None else (0 if seconds is not None else 1)
        self.created = time.time()
        self.expires_at = self.created + seconds if seconds is not None else None
        self.hang_seconds = _opt_num(spec, "hang_seconds")
        self.delay_seconds = _opt_num(spec, "delay_seconds")
        if action == "delay" and self.delay_seconds is None:
            raise BadRule('"delay" needs "delay_seconds"')
        self.forward = bool(spec.get("forward", False))
        if self.forward and action == "delay":
            raise BadRule('"forward" makes no sense with "delay" (it always forwards)')
        self.body = spec.get("body")
        if self.body is not None and not isinstance(self.body, (str, dict, list)):
            raise BadRule('"body" must be a string or JSON')
        self.content_type = _opt_str(spec, "content_type")
        headers = spec.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, (str, int)) for v in headers.values()):
            raise BadRule('"headers" must be an object of strings')
        self.headers = {str(k): str(v) for k, v in headers.items()}
        self.data = spec.get("data")
        self.fired = 0
        self.last_fired: float | None = None

    def active(self, now: float) -> bool:
        if self.count and self.fired >= self.count:
            return False
        return self.expires_at is None or now < self.expires_at

    def matches(self, req: "RequestInfo") -> bool:
        if self.method and req.method != self.method:
            return False
        if self.service and req.service != self.service:
            return False
        return self.match in ("*", req.operation, req.path)

    def to_json(self, now: float) -> dict[str, Any]:
        out = dict(self.spec)
        out.update(
            id=self.id,
            action=self.action,
            count=self.count,
            fired=self.fired,
            remaining=(max(0, self.count - self.fired) if self.count else None),
            active=self.active(now),
            created=self.created,
            last_fired=self.last_fired,
            expires_in=(round(self.expires_at - now, 3) if self.expires_at is not None else None),
        )
        if self.action == "error":
            out["status"] = self.status
        return out


def _opt_str(spec: dict, key: str) -> str | None:
    v = spec.get(key)
    if v is not None and not isinstance(v, str):
        raise BadRule(f'"{key}" must be a string')
    return v


def _opt_num(spec: dict, key: str) -> float | None:
    v = spec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise BadRule(f'"{key}" must be a number >= 0')
    return float(v)


def _opt_int(spec: dict, key: str, lo: int, hi: int | None) -> int | None:
    v = spec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise BadRule(f'"{key}" must be an integer >= {lo}' + (f" and <= {hi}" if hi is not None else ""))
    return v


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.next_rule = itertools.count(1)
        self.log: list[dict[str, Any]] = []
        self.next_seq = itertools.count(1)
        self.next_conn = itertools.count(1)

    def add_rule(self, spec: Any) -> Rule:
        with self.lock:
            rule = Rule(next(self.next_rule), spec)
            self.rules.append(rule)
            return rule

    def take(self, req: "RequestInfo") -> Rule | None:
        """The first active matching rule (in creation order), counted as fired."""
        with self.lock:
            now = time.time()
            for rule in self.rules:
                if rule.active(now) and rule.matches(req):
                    rule.fired += 1
                    rule.last_fired = now
                    return rule
        return None

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            entry["seq"] = next(self.next_seq)
            self.log.append(entry)
        return entry

    def update(self, entry: dict[str, Any], **fields: Any) -> None:
        with self.lock:
            entry.update(fields)


STATE = State()


# ---------------------------------------------------------------------------
# Request classification
# ---------------------------------------------------------------------------
class RequestInfo:
    """What the proxy knows about one request: protocol, service, operation."""

    def __init__(self, method: str, target: str, headers: Any, body: bytes):
        self.method = method
        split = urlsplit(target)
        self.path = split.path or "/"
        self.query = split.query
        self.protocol = "http"  # query | json | jsonrpc | http
        self.service: str | None = None
        self.operation = self.path
        self.json_prefix: str | None = None
        self.jsonrpc_id: Any = None

        self.service = _sigv4_service(headers.get("Authorization", ""))
        amz_target = headers.get("X-Amz-Target")
        ctype = (headers.get("Content-Type") or "").lower()
        if amz_target:
            prefix, _, op = amz_target.rpartition(".")
            self.protocol, self.operation, self.json_prefix = "json", op, prefix
            if self.service is None and prefix == "AmazonSQS":
                self.service = "sqs"
            return
        params: dict[str, list[str]] = {}
        if self.query:
            params = parse_qs(self.query, keep_blank_values=True)
        if "Action" not in params and body and "x-www-form-urlencoded" in ctype:
            try:
                params = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            except (UnicodeDecodeError, ValueError):
                params = {}
        if params.get("Action"):
            self.protocol, self.operation = "query", params["Action"][0]
            if self.service is None:
                self.service = QUERY_VERSIONS.get((params.get("Version") or [""])[0])
            return
        if body.lstrip()[:1] in (b"{", b"[") or "json" in ctype:
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                return
            calls = doc if isinstance(doc, list) else [doc]
            methods = [c.get("method") for c in calls if isinstance(c, dict) and "jsonrpc" in c]
            if methods and all(isinstance(m, str) for m in methods):
                self.protocol, self.operation = "jsonrpc", ",".join(methods)
                if isinstance(doc, dict):
                    self.jsonrpc_id = doc.get("id")


def _sigv4_service(auth: str) -> str | None:
    # AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sqs/aws4_request, ...
    i = auth.find("Credential=")
    if i < 0:
        return None
    scope = auth[i + len("Credential="):].split(",", 1)[0].strip().split("/")
    return scope[3] if len(scope) >= 5 else None


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def default_code(status: int) -> str:
    return {503: "ServiceUnavailable"}.get(status, "InternalFailure" if status >= 500 else "InvalidRequest")


def error_answer(rule: Rule, req: RequestInfo) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of an "error" fault, in the request's own protocol."""
    status = rule.status
    headers: list[tuple[str, str]] = []
    request_id = str(uuid.uuid4())
    fault = rule.type or ("Sender" if status < 500 else "Receiver")
    if rule.body is not None:
        if isinstance(rule.body, str):
            body = rule.body.encode()
            ctype = rule.content_type or "text/plain; charset=utf-8"
        else:
            body = json.dumps(rule.body).encode()
            ctype = rule.content_type or "application/json"
        headers.append(("Content-Type", ctype))
    elif req.protocol == "query":
        code = str(rule.code if rule.code is not None else default_code(status))
        message = rule.message if rule.message is not None else "Injected fault"
        headers.append(("x-amzn-RequestId", request_id))
        if req.service == "ec2":
            # EC2's own query dialect (what aws-sdk-ec2 and botocore's ec2 parser read).
            text = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
                f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
            )
        else:
            text = (
                "<ErrorResponse><Error>"
                f"<Type>{fault}</Type><Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            )
        body = text.encode()
        headers.append(("Content-Type", rule.content_type or "text/xml"))
    elif req.protocol == "json":
        code = str(rule.code if rule.code is not None else default_code(status))
        message = rule.message if rule.message is not None else "Injected fault"
        namespace, query_compatible = JSON_NAMESPACES.get(req.json_prefix or "", (None, False))
        if query_compatible:
            shape = SQS_SHAPES.get(code, code)
            type_ = f"{namespace}#{shape}"
            headers.append(("x-amzn-query-error", f"{code};{fault}"))
        else:
            type_ = f"{namespace}#{code}" if namespace else code
        headers.append(("X-Amzn-Errortype", type_))
        headers.append(("x-amzn-RequestId", request_id))
        headers.append(("Content-Type", rule.content_type or "application/x-amz-json-1.0"))
        body = json.dumps({"__type": type_, "message": message}).encode()
    elif req.protocol == "jsonrpc" and status == 200:
        # A JSON-RPC error object (Zabbix answers API errors with HTTP 200).
        try:
            code = int(rule.code) if rule.code is not None else -32500
        except (TypeError, ValueError):
            code = -32500
        message = rule.message if rule.message is not None else "Application error."
        data = rule.data if rule.data is not None else "Injected fault"
        body = json.dumps(
            {"jsonrpc": "2.0", "error": {"code": code, "message": message, "data": data}, "id": req.jsonrpc_id}
        ).encode()
        headers.append(("Content-Type", rule.content_type or "application/json"))
    else:
        message = rule.message if rule.message is not None else (rule.code and str(rule.code)) or "Injected fault"
        body = message.encode()
        headers.append(("Content-Type", rule.content_type or "text/plain; charset=utf-8"))
    headers.extend(rule.headers.items())
    return status, headers, body


# ---------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------
class Upstream:
    def __init__(self, url: str, timeout: float | None, insecure: bool, preserve_host: bool):
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise SystemExit(f"--upstream must be http(s)://HOST[:PORT][/PREFIX], not {url!r}")
        self.scheme = split.scheme
        self.host = split.hostname
        self.port = split.port or (443 if self.scheme == "https" else 80)
        default_port = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.prefix = split.path.rstrip("/")
        self.timeout = timeout
        self.preserve_host = preserve_host
        self.ssl_context = None
        if self.scheme == "https":
            self.ssl_context = ssl.create_default_context()
            if insecure:
                self.ssl_context.check_hostname = False
                self.ssl_context.verify_mode = ssl.CERT_NONE

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    upstream: Upstream


class Handler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"  # keep-alive towards clients
    server_version = "lastcall-faults-proxy"

    # -- per-connection set-up --------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.conn_id = next(STATE.next_conn)
        self.upstream_conn: http.client.HTTPConnection | None = None
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        if self.upstream_conn is not None:
            self.upstream_conn.close()
            self.upstream_conn = None

    def log_message(self, fmt: str, *args: Any) -> None:
        log(f"conn {getattr(self, 'conn_id', '?')}: " + (fmt % args))

    # -- dispatch -------------------------------------------------------------------
    def handle_one_request(self) -> None:
        # BaseHTTPRequestHandler only calls do_<METHOD>; route every method to one place.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.dispatch()
            try:
                self.wfile.flush()
            except (OSError, ValueError):
                self.close_connection = True
        except (TimeoutError, ConnectionError, OSError) as exc:
            log(f"conn {self.conn_id}: {exc!r}")
            self.close_connection = True

    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self) -> None:
        body = self.read_body()
        path_only = self.path.split("?", 1)[0]
        if path_only == CONTROL_PREFIX or path_only.startswith(CONTROL_PREFIX + "/"):
            self.control(path_only, body)
            return
        req = RequestInfo(self.command, self.path, self.headers, body)
        rule = STATE.take(req)
        entry = STATE.record(
            {
                "time": time.time(),
                "method": self.command,
                "path": req.path,
                "query": req.query or None,
                "operation": req.operation,
                "service": req.service,
                "protocol": req.protocol,
                "conn": self.conn_id,
                "fault": rule.id if rule else None,
                "action": rule.action if rule else None,
                "status": None,
                "upstream_status": None,
                "outcome": "pending",
                "duration": None,
            }
        )
        started = time.monotonic()
        try:
            self.serve_request(req, body, rule, entry)
        finally:
            STATE.update(entry, duration=round(time.monotonic() - started, 3))

    # -- the data path ----------------------------------------------------------------
    def serve_request(self, req: RequestInfo, body: bytes, rule: Rule | None, entry: dict[str, Any]) -> None:
        if rule is not None and rule.action == "delay":
            if not self.wait_or_client_gone(rule.delay_seconds or 0.0):
                STATE.update(entry, outcome="client-closed")
                self.close_connection = True
                return
            rule = None  # then forward normally
        upstream_answer = None
        if rule is None or rule.forward:
            try:
                upstream_answer = self.forward(body)
            except (OSError, http.client.HTTPException) as exc:
                log(f"conn {self.conn_id}: upstream failed: {exc!r}")
                if rule is None:
                    msg = f"faults proxy: upstream {self.server.upstream.host_header} failed: {exc!r}".encode()
                    self.answer(502, [("Content-Type", "text/plain; charset=utf-8")], msg)
                    STATE.update(entry, status=502, outcome="upstream-error")
                    return
                STATE.update(entry, outcome="upstream-error")
            else:
                STATE.update(entry, upstream_status=upstream_answer[0])
        if rule is None:
            assert upstream_answer is not None
            self.answer(*upstream_answer)
            STATE.update(entry, status=upstream_answer[0], outcome="forwarded")
            return
        if rule.action == "error":
            status, headers, payload = error_answer(rule, req)
            self.answer(status, headers, payload)
            STATE.update(entry, status=status, outcome="error")
        elif rule.action == "reset":
            self.reset()
            STATE.update(entry, outcome="reset")
        elif rule.action == "hang":
            seconds = rule.hang_seconds if rule.hang_seconds is not None else MAX_HANG
            gone = not self.wait_or_client_gone(seconds)
            STATE.update(entry, outcome="client-closed" if gone else "hang-timeout")
            # Close without an answer (a plain FIN once the hang is over).
            self.close_connection = True

    def forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        up = self.server.upstream
        target = up.prefix + self.path if self.path.startswith("/") else self.path
        for attempt in (1, 2):
            reused = self.upstream_conn is not None
            if self.upstream_conn is None:
                self.upstream_conn = up.connect()
            conn = self.upstream_conn
            try:
                conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                host = self.headers.get("Host") if up.preserve_host else None
                conn.putheader("Host", host or up.host_header)
                for name, value in self.headers.items():
                    if name.lower() not in SKIP_REQUEST:
                        conn.putheader(name, value)
                if body or self.command in ("POST", "PUT", "PATCH") or "Content-Length" in self.headers:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()  # b"" for HEAD, 204, 304; also frees the connection
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine):
                conn.close()
                self.upstream_conn = None
                if reused and attempt == 1:
                    continue  # a kept-alive upstream connection went stale: once more on a new one
                raise
            except BaseException:
                conn.close()
                self.upstream_conn = None
                raise
            if resp.will_close:
                conn.close()
                self.upstream_conn = None
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in SKIP_RESPONSE]
            if self.command == "HEAD" and resp.getheader("Content-Length") is not None:
                headers.append(("Content-Length", resp.getheader("Content-Length")))
            return resp.status, headers, data
        raise AssertionError("unreachable")

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        has_length = False
        for name, value in headers:
            has_length |= name.lower() == "content-length"
            self.send_header(name, value)
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        if not has_length and not (status in (204, 304) or 100 <= status < 200):
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def reset(self) -> None:
        """Close the client connection at once with an RST (SO_LINGER 0)."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # rfile (a makefile) holds the descriptor open: close it first, so the
            # socket's close() really closes it now, before socketserver would
            # shutdown(SHUT_WR) it and send a FIN.
            self.rfile.close()
            sock.close()
        except OSError:
            pass

    def wait_or_client_gone(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False as soon as the client closes its side."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                readable, _, _ = select.select([sock], [], [], min(left, 0.5))
                if readable:
                    peek = sock.recv(1, socket.MSG_PEEK)
                    if not peek:
                        return False
                    time.sleep(min(left, 0.05))  # pipelined data: keep holding
            except (OSError, ValueError):
                return False

    # -- control API -------------------------------------------------------------------
    def control(self, path: str, body: bytes) -> None:
        parts = [p for p in path[len(CONTROL_PREFIX):].split("/") if p]
        query = parse_qs(self.path.split("?", 1)[1]) if "?" in self.path else {}
        method = self.command
        now = time.time()
        if not parts and method == "GET":
            up = self.server.upstream
            return self.json(200, {"ok": True, "upstream": f"{up.scheme}://{up.host_header}{up.prefix}"})
        if parts == ["rules"]:
            if method == "POST":
                try:
                    spec = json.loads(body or b"null")
                    specs = spec if isinstance(spec, list) else [spec]
                    rules = [STATE.add_rule(s) for s in specs]
                except (ValueError, BadRule) as exc:
                    return self.json(400, {"error": str(exc)})
                if isinstance(spec, list):
                    return self.json(200, [{"id": r.id} for r in rules])
                return self.json(200, {"id": rules[0].id})
            if method == "GET":
                every = query.get("all", ["0"])[0] not in ("0", "false", "")
                with STATE.lock:
                    out = [r.to_json(now) for r in STATE.rules if every or r.active(now)]
                return self.json(200, out)
            if method == "DELETE":
                with STATE.lock:
                    n = len(STATE.rules)
                    STATE.rules.clear()
                return self.json(200, {"ok": True, "deleted": n})
        if len(parts) == 2 and parts[0] == "rules" and parts[1].isdigit():
            rid = int(parts[1])
            with STATE.lock:
                rule = next((r for r in STATE.rules if r.id == rid), None)
                if rule is None:
                    return self.json(404, {"error": f"no rule {rid}"})
                if method == "GET":
                    return self.json(200, rule.to_json(now))
                if method == "DELETE":
                    STATE.rules.remove(rule)
                    return self.json(200, {"ok": True})
        if parts == ["log"]:
            if method == "GET":
                since = int(query.get("since", ["0"])[0] or 0)
                with STATE.lock:
                    out = [dict(e) for e in STATE.log if e["seq"] > since]
                return self.json(200, out)
            if method == "DELETE":
                with STATE.lock:
                    n = len(STATE.log)
                    STATE.log.clear()
                return self.json(200, {"ok": True, "deleted": n})
        self.json(404, {"error": f"no such control resource: {method} {self.path}"})

    def json(self, status: int, obj: Any) -> None:
        self.answer(status, [("Content-Type", "application/json")], json.dumps(obj).encode())


def main() -> None:
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http(s)://HOST:PORT[/PREFIX] to forward to")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    parser.add_argument(
        "--upstream-timeout", type=float, default=300.0,
        help="seconds to wait on the upstream (connect, and between bytes); 0 = forever (default 300)",
    )
    parser.add_argument("--insecure", action="store_true", help="don't verify an https upstream's certificate")
    parser.add_argument("--preserve-host", action="store_true", help="forward the client's Host header unchanged")
    parser.add_argument("--no-stdin-exit", action="store_true", help="don't exit at stdin EOF")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args()
    VERBOSE = args.verbose

    if ":" in args.host:
        ProxyServer.address_family = socket.AF_INET6
    server = ProxyServer((args.host, args.port), Handler)
    server.upstream = Upstream(args.upstream, args.upstream_timeout or None, args.insecure, args.preserve_host)

    def on_signal(_signum: int, _frame: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not args.no_stdin_exit:
        def watch_stdin() -> None:
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            os._exit(0)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{server.server_port}"
    sys.stdout.write(json.dumps({"url": url, "control": url + CONTROL_PREFIX}, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
