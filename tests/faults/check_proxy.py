#!/usr/bin/env python3
"""Self-test of tests/faults/proxy.py.

    .venv/bin/python tests/faults/check_proxy.py [-v] [--quick] [-k NAME]...

Starts the AWS emulator (tests/emulator/emulator.py) and the proxy in front of
it, and checks with boto3 through the proxy: pass-through (SQS with long polls,
Auto Scaling, keep-alive), error faults in the query and SQS JSON protocols as
botocore parses them, reset, hang, delay, count- and time-limited rules, the
request log and the control API.  A second and third proxy sit in front of a
fake IMDSv2 (from the emulator) and of a JSON-RPC stub (Zabbix-like) served
here.  It runs the proxy with `python -I -S` (no site-packages) to make sure
it needs only the standard library.  Exits 1 if any check fails.

Started with a Python without boto3, it re-runs itself with the project's .venv Python.
--quick skips the 20 s long poll that otherwise runs in the background.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROXY = os.path.join(HERE, "proxy.py")
EMULATOR = os.path.join(ROOT, "tests", "emulator", "emulator.py")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")

try:
    import boto3
    import botocore.exceptions
    from botocore.config import Config
except ImportError:  # re-run with the venv's Python
    if os.path.exists(VENV_PY) and os.path.realpath(sys.executable) != os.path.realpath(VENV_PY):
        os.execv(VENV_PY, [VENV_PY, os.path.abspath(__file__), *sys.argv[1:]])
    raise

AMI = "ami-12c6146b"
VERBOSE = False
CHECKS = 0
FAILURES: list[str] = []


class CheckFailed(Exception):
    pass


def check(cond: Any, what: str) -> None:
    global CHECKS
    CHECKS += 1
    if not cond:
        raise CheckFailed(what)
    if VERBOSE:
        print(f"    ok: {what}", flush=True)


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
def spawn_json(cmd: list[str], what: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, cwd=ROOT)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{what} did not start (exit {proc.wait()})")
    return proc, json.loads(line)


def start_proxy(upstream: str, *extra: str) -> tuple[subprocess.Popen, dict]:
    # -I -S: no site-packages, so the proxy must make do with the standard library.
    return spawn_json([sys.executable, "-I", "-S", PROXY, "--upstream", upstream, *extra], "the proxy")


class Control:
    """The proxy's control API."""

    def __init__(self, info: dict):
        self.url = info["url"]
        self.control = info["control"]
        host, port = self.url.split("//", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, "/_faults" + path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def rule(self, **spec: Any) -> int:
        status, out = self.call("POST", "/rules", spec)
        if status != 200:
            raise CheckFailed(f"POST /_faults/rules {spec} -> {status} {out}")
        return out["id"]

    def rules(self, all_: bool = False) -> list[dict]:
        return self.call("GET", "/rules" + ("?all=1" if all_ else ""))[1]

    def get_rule(self, rid: int) -> dict:
        return self.call("GET", f"/rules/{rid}")[1]

    def log(self) -> list[dict]:
        return self.call("GET", "/log")[1]

    def clear(self) -> None:
        self.call("DELETE", "/rules")


def raw_request(ctl: Control, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(ctl.host, ctl.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


SIGV4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/{svc}/aws4_request, SignedHeaders=host, Signature=00"


def sqs_raw(ctl: Control, op: str, payload: dict) -> tuple[int, dict, bytes]:
    return raw_request(ctl, "POST", "/", json.dumps(payload).encode(), {
        "X-Amz-Target": f"AmazonSQS.{op}",
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": SIGV4.format(svc="sqs"),
    })


# ---------------------------------------------------------------------------
# A JSON-RPC stub upstream (Zabbix-like) that echoes what it got
# ---------------------------------------------------------------------------
class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        out = json.dumps({
            "jsonrpc": "2.0",
            "result": {
                "method": doc.get("method"),
                "host": self.headers.get("Host"),
                "path": self.path,
                "size": len(body),
                "te": self.headers.get("Transfer-Encoding"),
                "xff": self.headers.get("X-Forwarded-For"),
                "custom": self.headers.get_all("X-Custom"),
            },
            "id": doc.get("id"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json-rpc")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/nothing":
            self.send_response(204)
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------
class Env:
    def __init__(self, emu_info: dict, ctl: Control):
        self.emu = emu_info
        self.ctl = ctl
        kw = dict(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing",
                  endpoint_url=ctl.url)
        once = Config(retries={"total_max_attempts": 1})
        self.kw = kw
        self.sqs = boto3.client("sqs", config=once, **kw)
        self.asg = boto3.client("autoscaling", config=once, **kw)
        self.asg_retrying = boto3.client("autoscaling", config=Config(retries={"mode": "standard", "total_max_attempts": 3}), **kw)
        self.direct_sqs = boto3.client("sqs", config=once, **{**kw, "endpoint_url": emu_info["endpoint"]})
        self.queue_url = ""
        self.group = "faults-asg"
        self.instance_id = ""

    def client(self, service: str, **config: Any) -> Any:
        return boto3.client(service, config=Config(**config), **self.kw)


def client_error(fn: Callable[[], Any]) -> botocore.exceptions.ClientError:
    try:
        fn()
    except botocore.exceptions.ClientError as exc:
        return exc
    raise CheckFailed("expected a ClientError, the call succeeded")


def sc_control(env: Env) -> None:
    ctl = env.ctl
    status, out = ctl.call("GET", "")
    check(status == 200 and out["ok"] and out["upstream"] == env.emu["endpoint"], f"GET /_faults: {out}")
    for bad in ({"action": "error"}, {"match": "X", "action": "explode"}, {"match": "X", "cuont": 2},
                {"match": "X", "status": 99}, {"match": "X", "action": "delay"}, {"match": "X", "count": -1}):
        status, out = ctl.call("POST", "/rules", bad)
        check(status == 400 and "error" in out, f"bad rule {bad} -> 400 ({status} {out})")
    status, out = ctl.call("POST", "/rules", [{"match": "A"}, {"match": "B", "count": 0}])
    check(status == 200 and len(out) == 2, f"a list of rules gives a list of ids: {out}")
    rules = ctl.rules()
    check([r["match"] for r in rules] == ["A", "B"], f"GET rules lists them: {rules}")
    check(rules[0]["count"] == 1 and rules[1]["count"] == 0 and rules[1]["remaining"] is None,
          "count defaults to 1; 0 = unlimited")
    check(ctl.call("DELETE", f"/rules/{out[0]['id']}")[0] == 200 and len(ctl.rules()) == 1, "DELETE one rule")
    check(ctl.call("DELETE", "/rules")[1]["deleted"] == 1 and ctl.rules() == [], "DELETE /_faults/rules clears")
    check(ctl.call("GET", "/nope")[0] == 404, "unknown control path -> 404")


def sc_sqs_passthrough(env: Env) -> None:
    sqs = env.sqs
    env.queue_url = sqs.create_queue(QueueName="faults-q")["QueueUrl"]
    check(env.queue_url.endswith("/faults-q"), f"CreateQueue through the proxy: {env.queue_url}")
    check(sqs.get_queue_url(QueueName="faults-q")["QueueUrl"] == env.queue_url, "GetQueueUrl")
    big = "x" * 200_000
    sqs.send_message(QueueUrl=env.queue_url, MessageBody="hello")
    sqs.send_message(QueueUrl=env.queue_url, MessageBody=big)
    got = []
    while len(got) < 2:
        msgs = sqs.receive_message(QueueUrl=env.queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10).get("Messages", [])
        check(msgs, "ReceiveMessage returns the sent messages")
        got += msgs
        for m in msgs:
            sqs.delete_message(QueueUrl=env.queue_url, ReceiptHandle=m["ReceiptHandle"])
    check(sorted(m["Body"] for m in got) == sorted(["hello", big]), "bodies (one of 200 kB) come back intact")

    # Long poll that returns early when a message arrives.
    result: dict = {}

    def poll() -> None:
        t0 = time.monotonic()
        r = sqs.receive_message(QueueUrl=env.queue_url, WaitTimeSeconds=5)
        result.update(msgs=r.get("Messages", []), elapsed=time.monotonic() - t0)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.0)
    env.direct_sqs.send_message(QueueUrl=env.queue_url, MessageBody="wake up")
    t.join(10)
    check(result.get("msgs") and result["msgs"][0]["Body"] == "wake up", f"long poll got the message: {result}")
    check(0.9 <= result["elapsed"] < 3.5, f"long poll (WaitTimeSeconds 5) returned early: {result['elapsed']:.2f}s")
    env.sqs.delete_message(QueueUrl=env.queue_url, ReceiptHandle=result["msgs"][0]["ReceiptHandle"])

    # Keep-alive: moto answers "Connection: close", the proxy keeps the client's connection.
    conn = http.client.HTTPConnection(env.ctl.host, env.ctl.port, timeout=10)
    for i in range(3):
        conn.request("POST", "/", json.dumps({"QueueName": "faults-q"}).encode(), {
            "X-Amz-Target": "AmazonSQS.GetQueueUrl", "Content-Type": "application/x-amz-json-1.0",
            "Authorization": SIGV4.format(svc="sqs")})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        check(resp.status == 200 and body["QueueUrl"] == env.queue_url and not resp.will_close,
              f"keep-alive request {i + 1} on one client connection")
    conn.close()
    log = [e for e in env.ctl.log() if e["operation"] == "GetQueueUrl"][-3:]
    check(len({e["conn"] for e in log}) == 1, f"the three requests shared one proxied connection: {log}")
    boto_conns = {e["conn"] for e in env.ctl.log() if e["operation"] in ("SendMessage", "DeleteMessage")}
    check(len(boto_conns) == 1, f"botocore reused its connection through the proxy: {boto_conns}")


def sc_asg_passthrough(env: Env) -> None:
    asg = env.asg
    asg.create_launch_configuration(LaunchConfigurationName="faults-lc", ImageId=AMI, InstanceType="t2.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName=env.group, LaunchConfigurationName="faults-lc",
                                  MinSize=1, MaxSize=2, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
    groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[env.group])["AutoScalingGroups"]
    check(len(groups) == 1 and len(groups[0]["Instances"]) == 1, "CreateAutoScalingGroup/Describe through the proxy")
    env.instance_id = groups[0]["Instances"][0]["InstanceId"]
    inst = asg.describe_auto_scaling_instances(InstanceIds=[env.instance_id])["AutoScalingInstances"]
    check(inst and inst[0]["AutoScalingGroupName"] == env.group, "DescribeAutoScalingInstances")
    # moto's own query-protocol error passes through unchanged.
    err = client_error(lambda: asg.complete_lifecycle_action(
        AutoScalingGroupName=env.group, LifecycleHookName="nope", LifecycleActionResult="CONTINUE",
        InstanceId=env.instance_id))
    check(err.response["Error"]["Code"] == "ValidationError"
          and err.response["ResponseMetadata"]["HTTPStatusCode"] == 400, f"moto's error passes: {err}")


def sc_asg_throttling(env: Env) -> None:
    ctl, asg = env.ctl, env.asg
    rid = ctl.rule(match="DescribeAutoScalingInstances", action="error", status=400, code="Throttling",
                   message="Rate exceeded", count=2)
    # Another operation is not affected.
    asg.describe_auto_scaling_groups(AutoScalingGroupNames=[env.group])
    for i in range(2):
        err = client_error(lambda: asg.describe_auto_scaling_instances(InstanceIds=[env.instance_id]))
        e = err.response["Error"]
        check(e["Code"] == "Throttling" and e["Message"] == "Rate exceeded" and e.get("Type") == "Sender"
              and err.response["ResponseMetadata"]["HTTPStatusCode"] == 400,
              f"throttled call {i + 1}: botocore sees Throttling / Rate exceeded / 400 ({err.response})")
        check(err.response["ResponseMetadata"].get("RequestId"), "the error has a RequestId")
    inst = asg.describe_auto_scaling_instances(InstanceIds=[env.instance_id])["AutoScalingInstances"]
    check(len(inst) == 1, "the third call succeeds")
    r = ctl.get_rule(rid)
    check(r["fired"] == 2 and not r["active"] and r["remaining"] == 0, f"rule fired twice and is spent: {r}")
    check(all(x["id"] != rid for x in ctl.rules()) and any(x["id"] == rid for x in ctl.rules(all_=True)),
          "GET rules lists active rules; ?all=1 also spent ones")

    # The raw answer, as aws-sdk-autoscaling parses it.
    ctl.rule(match="DescribeAutoScalingGroups", code="Throttling", message="Rate exceeded")
    status, headers, body = raw_request(ctl, "POST", "/", b"Action=DescribeAutoScalingGroups&Version=2011-01-01",
                                        {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                                         "Authorization": SIGV4.format(svc="autoscaling")})
    text = body.decode()
    check(status == 400 and headers["content-type"] == "text/xml" and text.startswith("<ErrorResponse><Error><Type>Sender</Type>"
          "<Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>"), f"raw query error: {text}")
    # Query protocol with Action in the query string (GET).
    ctl.rule(match="DescribeAutoScalingGroups", status=500, code="InternalFailure", message="boom")
    status, headers, body = raw_request(ctl, "GET", "/?Action=DescribeAutoScalingGroups&Version=2011-01-01")
    check(status == 500 and b"<Type>Receiver</Type><Code>InternalFailure</Code>" in body, f"GET query action, 5xx is Receiver: {body}")

    # With the SDK's standard retries, two Throttling answers are retried away.
    before = len(ctl.log())
    ctl.rule(match="DescribeAutoScalingInstances", code="Throttling", message="Rate exceeded", count=2)
    inst = env.asg_retrying.describe_auto_scaling_instances(InstanceIds=[env.instance_id])["AutoScalingInstances"]
    calls = [e for e in ctl.log()[before:] if e["operation"] == "DescribeAutoScalingInstances"]
    check(inst and [e["status"] for e in calls] == [400, 400, 200], f"botocore retried Throttling: {calls}")


def sc_sqs_errors(env: Env) -> None:
    ctl, sqs = env.ctl, env.sqs
    # What moto itself sends for an SQS error (the shape to match).
    status, moto_headers, moto_body = sqs_raw(ctl, "GetQueueUrl", {"QueueName": "no-such-queue"})
    moto_doc = json.loads(moto_body)
    check(status == 400 and moto_headers.get("x-amzn-query-error") == "AWS.SimpleQueueService.NonExistentQueue;Sender"
          and moto_doc["__type"] == "com.amazonaws.sqs#QueueDoesNotExist", f"moto's SQS error: {moto_headers} {moto_doc}")

    ctl.rule(match="GetQueueUrl", code="AWS.SimpleQueueService.NonExistentQueue", message="The specified queue does not exist.")
    status, headers, body = sqs_raw(ctl, "GetQueueUrl", {"QueueName": "faults-q"})
    doc = json.loads(body)
    for h in ("content-type", "x-amzn-query-error", "x-amzn-errortype"):
        check(headers.get(h) == moto_headers.get(h), f"injected {h} = moto's: {headers.get(h)!r} vs {moto_headers.get(h)!r}")
    check(status == 400 and doc["__type"] == moto_doc["__type"] and doc["message"] == moto_doc["message"],
          f"injected body matches moto's: {doc} vs {moto_doc}")

    rid = ctl.rule(match="ReceiveMessage", action="error", status=400, code="RequestThrottled", message="Rate exceeded")
    err = client_error(lambda: sqs.receive_message(QueueUrl=env.queue_url, WaitTimeSeconds=0))
    e = err.response["Error"]
    check(e["Code"] == "RequestThrottled" and e["Message"] == "Rate exceeded" and e.get("Type") == "Sender"
          and err.response["ResponseMetadata"]["HTTPStatusCode"] == 400, f"botocore parses RequestThrottled: {err.response}")
    check(isinstance(err, sqs.exceptions.RequestThrottled), f"botocore maps it to the modeled exception: {type(err)}")
    check(ctl.get_rule(rid)["fired"] == 1, "the SQS rule fired once")
    status, headers, body = sqs_raw(ctl, "ReceiveMessage", {"QueueUrl": env.queue_url})
    check(status == 200, "count 1: the next ReceiveMessage passes")

    ctl.rule(match="ReceiveMessage", code="ThrottlingException", message="Rate exceeded")
    status, headers, body = sqs_raw(ctl, "ReceiveMessage", {"QueueUrl": env.queue_url})
    check(status == 400 and headers["x-amzn-query-error"] == "ThrottlingException;Sender"
          and json.loads(body) == {"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded"}
          and headers["content-type"] == "application/x-amz-json-1.0", f"raw ThrottlingException: {headers} {body}")
    ctl.rule(match="DeleteMessage", status=500, code="InternalError", message="We encountered an internal error.")
    err = client_error(lambda: sqs.delete_message(QueueUrl=env.queue_url, ReceiptHandle="x"))
    check(err.response["Error"]["Code"] == "InternalError" and err.response["Error"].get("Type") == "Receiver"
          and err.response["ResponseMetadata"]["HTTPStatusCode"] == 500, f"5xx SQS error is Receiver: {err.response}")

    # forward: the call reaches moto, only the answer is replaced.
    ctl.rule(match="SendMessage", status=500, code="InternalError", message="lost answer", forward=True)
    err = client_error(lambda: sqs.send_message(QueueUrl=env.queue_url, MessageBody="forwarded"))
    check(err.response["Error"]["Code"] == "InternalError", "forward+error: the client sees the error")
    msgs = sqs.receive_message(QueueUrl=env.queue_url, WaitTimeSeconds=2).get("Messages", [])
    check(msgs and msgs[0]["Body"] == "forwarded", "forward+error: the message did reach the queue")
    sqs.delete_message(QueueUrl=env.queue_url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    entry = [e for e in ctl.log() if e["operation"] == "SendMessage"][-1]
    check(entry["upstream_status"] == 200 and entry["status"] == 500, f"log shows both statuses: {entry}")


def sc_parallel(env: Env) -> None:
    ctl = env.ctl
    rid = ctl.rule(match="GetQueueUrl", code="RequestThrottled", message="Rate exceeded", count=5)
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = env.client("sqs", retries={"total_max_attempts": 1})
        for _ in range(10):
            try:
                client.get_queue_url(QueueName="faults-q")
                r = "ok"
            except botocore.exceptions.ClientError as exc:
                r = exc.response["Error"]["Code"]
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    check(len(results) == 80 and results.count("RequestThrottled") == 5 and results.count("ok") == 75,
          f"8 clients x 10 calls in parallel: exactly count=5 faults ({len(results)} results)")
    check(ctl.get_rule(rid)["fired"] == 5, "fired == 5")


def sc_reset(env: Env) -> None:
    ctl, sqs = env.ctl, env.sqs
    rid = ctl.rule(match="ListQueues", action="reset")
    try:
        sqs.list_queues()
    except botocore.exceptions.ClientError as exc:
        raise CheckFailed(f"reset gave an HTTP answer: {exc}")
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        check(True, f"reset: botocore sees a connection error ({type(exc).__name__})")
    else:
        raise CheckFailed("reset: the call succeeded")
    check(ctl.get_rule(rid)["fired"] == 1, "reset rule fired")
    check("faults-q" in str(sqs.list_queues().get("QueueUrls")), "next ListQueues passes")

    # A raw socket sees an RST (ECONNRESET), not a clean close.
    ctl.rule(match="/reset-me", action="reset")
    s = socket.create_connection((ctl.host, ctl.port), timeout=5)
    s.sendall(b"GET /reset-me HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = s.recv(100)
        raise CheckFailed(f"expected ECONNRESET, got {data!r}")
    except ConnectionResetError:
        check(True, "raw socket: ECONNRESET")
    finally:
        s.close()
    check([e for e in ctl.log() if e["path"] == "/reset-me"][-1]["outcome"] == "reset", "log: outcome reset")


def sc_hang(env: Env) -> None:
    ctl = env.ctl
    ctl.rule(match="GetQueueAttributes", action="hang")
    impatient = env.client("sqs", retries={"total_max_attempts": 1}, read_timeout=1, connect_timeout=2)
    t0 = time.monotonic()
    try:
        impatient.get_queue_attributes(QueueUrl=env.queue_url, AttributeNames=["All"])
        raise CheckFailed("hang: the call succeeded")
    except botocore.exceptions.ReadTimeoutError:
        check(0.9 <= time.monotonic() - t0 < 3, "hang: botocore times out (ReadTimeoutError after ~1 s)")

    def gone() -> Any:
        e = [e for e in ctl.log() if e["operation"] == "GetQueueAttributes"][-1]
        return e if e["outcome"] == "client-closed" else None

    e = wait_for(gone, 3, "the proxy to notice the client gave up")
    check(e["status"] is None and e["fault"] is not None, f"log: hang without status: {e}")

    # hang_seconds: the connection is closed (no answer) after that long.
    ctl.rule(match="/latest/meta-data/instance-id", action="hang", hang_seconds=1)
    t0 = time.monotonic()
    try:
        raw_request(ctl, "GET", "/latest/meta-data/instance-id", timeout=5)
        raise CheckFailed("hang_seconds: got an answer")
    except http.client.RemoteDisconnected:
        check(0.9 <= time.monotonic() - t0 < 2.5, f"hang_seconds 1: closed without answer after {time.monotonic() - t0:.2f}s")
    check([e for e in ctl.log() if e["path"] == "/latest/meta-data/instance-id"][-1]["outcome"] == "hang-timeout", "log: hang-timeout")

    # delay: held, then forwarded.
    ctl.rule(match="GetQueueUrl", action="delay", delay_seconds=1)
    t0 = time.monotonic()
    url = env.sqs.get_queue_url(QueueName="faults-q")["QueueUrl"]
    check(url == env.queue_url and 0.95 <= time.monotonic() - t0 < 2.5, "delay: answered after ~1 s")


def sc_seconds_and_filters(env: Env) -> None:
    ctl, asg = env.ctl, env.asg
    rid = ctl.rule(match="DescribeAutoScalingGroups", status=503, code="ServiceUnavailable", message="later", seconds=1)
    for _ in range(3):
        err = client_error(lambda: asg.describe_auto_scaling_groups(AutoScalingGroupNames=[env.group]))
        check(err.response["Error"]["Code"] == "ServiceUnavailable"
              and err.response["ResponseMetadata"]["HTTPStatusCode"] == 503, "within the window every call fails")
    r = ctl.get_rule(rid)
    check(r["active"] and r["count"] == 0 and 0 < r["expires_in"] <= 1, f"seconds alone: unlimited count: {r}")
    time.sleep(1.1)
    asg.describe_auto_scaling_groups(AutoScalingGroupNames=[env.group])
    check(not ctl.get_rule(rid)["active"] and ctl.get_rule(rid)["fired"] == 3, "the window expired")

    # count and seconds together: whichever ends first.
    rid = ctl.rule(match="DescribeAutoScalingGroups", code="Throttling", message="Rate exceeded", count=1, seconds=30)
    client_error(lambda: asg.describe_auto_scaling_groups())
    asg.describe_auto_scaling_groups()
    check(ctl.get_rule(rid)["fired"] == 1, "count 1 within 30 s: fired once")

    # "*" with a service filter, and a method filter.
    ctl.rule(match="*", service="sqs", code="RequestThrottled", message="Rate exceeded")
    asg.describe_auto_scaling_groups()
    err = client_error(lambda: env.sqs.list_queues())
    check(err.response["Error"]["Code"] == "RequestThrottled", "'*' + service sqs hits only SQS")
    ctl.rule(match="/latest/api/token", method="GET", action="reset")
    check(len(ctl.rules()) == 1, "the method-filtered rule waits")
    ctl.clear()


def sc_imds(env: Env) -> list[subprocess.Popen]:
    # A fake IMDSv2 from the emulator, behind its own proxy (operation = path).
    conn = http.client.HTTPConnection(env.emu["control"].split("//")[1], timeout=10)
    conn.request("POST", "/imds", json.dumps({"instance_id": env.instance_id}), {"Content-Type": "application/json"})
    imds = json.loads(conn.getresponse().read())
    conn.close()
    proc, info = start_proxy(imds["endpoint"])
    ctl = Control(info)
    c = http.client.HTTPConnection(ctl.host, ctl.port, timeout=10)
    c.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    r = c.getresponse()
    token = r.read().decode()
    check(r.status == 200 and r.getheader("X-aws-ec2-metadata-token-ttl-seconds") == "60",
          "IMDS token PUT passes (no X-Forwarded-For added; TTL header echoed)")
    c.request("GET", "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
    r = c.getresponse()
    check(r.status == 200 and r.read().decode() == env.instance_id, "IMDS GET on the same connection")
    ctl.rule(match="/latest/meta-data/instance-id", status=500)
    c.request("GET", "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
    r = c.getresponse()
    check(r.status == 500 and r.getheader("Content-Type").startswith("text/plain") and r.read() == b"Injected fault",
          "plain error for a non-AWS service")
    ctl.rule(match="/latest/meta-data/instance-id", status=404, body="", headers={"X-Test": "1"})
    c.request("GET", "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
    r = c.getresponse()
    check(r.status == 404 and r.read() == b"" and r.getheader("X-Test") == "1", "explicit body and headers")
    c.close()
    ops = [(e["method"], e["operation"], e["status"]) for e in ctl.log()]
    check(ops == [("PUT", "/latest/api/token", 200), ("GET", "/latest/meta-data/instance-id", 200),
                  ("GET", "/latest/meta-data/instance-id", 500), ("GET", "/latest/meta-data/instance-id", 404)],
          f"IMDS log: {ops}")
    check(len({e["conn"] for e in ctl.log()}) == 1, "IMDS: one kept-alive client connection")
    return [proc]


def sc_jsonrpc(env: Env) -> list[subprocess.Popen]:
    stub = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    upstream_host = f"127.0.0.1:{stub.server_port}"
    proc, info = start_proxy(f"http://{upstream_host}")
    ctl = Control(info)

    def rpc(method: str, rid: int = 1, **kw: Any) -> tuple[int, dict, Any]:
        status, headers, body = raw_request(ctl, "POST", "/api_jsonrpc.php",
                                            json.dumps({"jsonrpc": "2.0", "method": method, "params": {}, "id": rid}).encode(),
                                            {"Content-Type": "application/json-rpc", "X-Custom": "v1", **kw})
        try:
            return status, headers, json.loads(body)
        except ValueError:
            return status, headers, body

    status, headers, doc = rpc("host.get")
    res = doc["result"]
    check(status == 200 and res["host"] == upstream_host and res["path"] == "/api_jsonrpc.php" and res["xff"] is None,
          f"JSON-RPC passes; Host is the upstream's: {res}")
    check(res["custom"] == ["v1"] and headers["set-cookie"], f"headers pass both ways: {res} {headers}")

    ctl.rule(match="host.delete", status=200, code=-32602, message="Invalid params.", data="No permissions.")
    status, _, doc = rpc("host.delete", 7)
    check(status == 200 and doc == {"jsonrpc": "2.0", "error": {"code": -32602, "message": "Invalid params.",
                                                                "data": "No permissions."}, "id": 7},
          f"JSON-RPC error object: {doc}")
    status, _, doc = rpc("host.delete", 8)
    check(status == 200 and doc["result"]["method"] == "host.delete", "count 1: next host.delete passes")
    ctl.rule(match="/api_jsonrpc.php", status=503)
    status, _, body = rpc("host.update")
    check(status == 503 and body == b"Injected fault", "matching the path hits every method")
    ctl.rule(match="hostgroup.get", status=502, body={"error": "bad gateway"})
    status, headers, body = rpc("hostgroup.get")
    check(status == 502 and body == {"error": "bad gateway"} and headers["content-type"] == "application/json", "JSON body")
    log = ctl.log()
    check([e["operation"] for e in log] == ["host.get", "host.delete", "host.delete", "host.update", "hostgroup.get"]
          and all(e["path"] == "/api_jsonrpc.php" and e["protocol"] == "jsonrpc" for e in log),
          f"operation = JSON-RPC method: {[e['operation'] for e in log]}")

    # Chunked request body, HEAD and 204.
    c = http.client.HTTPConnection(ctl.host, ctl.port, timeout=10)
    payload = json.dumps({"jsonrpc": "2.0", "method": "chunky", "id": 1, "pad": "y" * 50000}).encode()
    c.request("POST", "/api_jsonrpc.php", body=iter([payload[:1000], payload[1000:]]), encode_chunked=True,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    res = json.loads(r.read())["result"]
    check(res["size"] == len(payload) and res["te"] is None and res["method"] == "chunky", f"chunked body de-chunked: {res}")
    c.request("HEAD", "/x")
    r = c.getresponse()
    check(r.status == 200 and r.getheader("Content-Length") == "1234" and r.read() == b"", "HEAD keeps Content-Length, no body")
    c.request("GET", "/nothing")
    r = c.getresponse()
    check(r.status == 204 and r.read() == b"", "204")
    c.request("GET", "/missing")
    r = c.getresponse()
    check(r.status == 404 and r.read() == b"", "404 passes")
    c.close()
    stub.shutdown()
    # Upstream gone: 502 from the proxy.
    stub.server_close()
    status, _, body = rpc("host.get")
    check(status == 502 and b"upstream" in body, f"upstream down -> 502: {body[:80]!r}")
    return [proc]


def sc_log(env: Env) -> None:
    ctl = env.ctl
    log = ctl.log()
    for e in log:
        missing = {"time", "method", "path", "operation", "fault", "status"} - set(e)
        check(not missing, f"log entry has every field: {e}")
    ops = {e["operation"] for e in log}
    for op in ("CreateQueue", "SendMessage", "ReceiveMessage", "DeleteMessage", "CreateAutoScalingGroup",
               "DescribeAutoScalingInstances", "CompleteLifecycleAction"):
        check(op in ops, f"log has {op}")
    throttled = [e for e in log if e["operation"] == "DescribeAutoScalingInstances" and e["fault"] is not None]
    check(len(throttled) >= 4 and all(e["status"] == 400 for e in throttled), "log: throttled calls have fault id and 400")
    sqs_e = next(e for e in log if e["operation"] == "CreateQueue")
    check(sqs_e["service"] == "sqs" and sqs_e["protocol"] == "json" and sqs_e["status"] == 200 and sqs_e["fault"] is None,
          f"SQS entry: {sqs_e}")
    asg_e = next(e for e in log if e["operation"] == "CreateAutoScalingGroup")
    check(asg_e["service"] == "autoscaling" and asg_e["protocol"] == "query", f"Auto Scaling entry: {asg_e}")
    check(all(log[i]["seq"] < log[i + 1]["seq"] for i in range(len(log) - 1)), "log in order")
    last = log[-1]["seq"]
    env.sqs.list_queues()
    check([e["operation"] for e in ctl.call("GET", f"/log?since={last}")[1]] == ["ListQueues"], "GET /log?since=SEQ")
    check(ctl.call("DELETE", "/log")[0] == 200 and ctl.log() == [], "DELETE /_faults/log clears")


def sc_lifetime(env: Env) -> None:
    proc, info = start_proxy(env.emu["endpoint"])
    proc.stdin.close()
    try:
        check(proc.wait(3) == 0, "exits 0 at stdin EOF")
    except subprocess.TimeoutExpired:
        proc.kill()
        raise CheckFailed("did not exit at stdin EOF")
    proc, info = start_proxy(env.emu["endpoint"])
    # A long poll is in flight; SIGTERM must not wait for it.
    holder = threading.Thread(target=lambda: _swallow(lambda: sqs_raw(Control(info), "ReceiveMessage",
                                                                       {"QueueUrl": env.queue_url, "WaitTimeSeconds": 10})),
                              daemon=True)
    holder.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    try:
        check(proc.wait(3) == 0, "exits 0 on SIGTERM, even with a request in flight")
    except subprocess.TimeoutExpired:
        proc.kill()
        raise CheckFailed("did not exit on SIGTERM")
    proc.stdin.close()


def _swallow(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        pass


def main() -> None:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--quick", action="store_true", help="skip the 20 s long poll")
    ap.add_argument("-k", action="append", default=[], help="run only scenarios whose name contains this")
    args = ap.parse_args()
    VERBOSE = args.verbose
    t_start = time.monotonic()

    emu, emu_info = spawn_json([VENV_PY, EMULATOR], "the emulator")
    proc, info = start_proxy(emu_info["endpoint"])
    procs = [emu, proc]
    env = Env(emu_info, Control(info))

    long_poll: dict = {}
    long_thread = None

    scenarios: list[tuple[str, Callable[[Env], Any]]] = [
        ("control", sc_control),
        ("sqs_passthrough", sc_sqs_passthrough),
        ("asg_passthrough", sc_asg_passthrough),
        ("asg_throttling", sc_asg_throttling),
        ("sqs_errors", sc_sqs_errors),
        ("parallel", sc_parallel),
        ("reset", sc_reset),
        ("hang", sc_hang),
        ("seconds_and_filters", sc_seconds_and_filters),
        ("imds", sc_imds),
        ("jsonrpc", sc_jsonrpc),
        ("log", sc_log),
        ("lifetime", sc_lifetime),
    ]
    needed = {"sqs_passthrough", "asg_passthrough"}  # set-up the others rely on
    try:
        for name, fn in scenarios:
            if args.k and name not in needed and not any(k in name for k in args.k):
                continue
            if name == "asg_throttling" and not args.quick and long_thread is None:
                # A 20 s long poll on an empty queue, alongside the rest.
                lp_url = env.sqs.create_queue(QueueName="faults-long")["QueueUrl"]
                lp_client = env.client("sqs", retries={"total_max_attempts": 1}, read_timeout=60)

                def long() -> None:
                    t0 = time.monotonic()
                    try:
                        r = lp_client.receive_message(QueueUrl=lp_url, WaitTimeSeconds=20)
                        long_poll.update(ok=True, msgs=len(r.get("Messages", [])))
                    except Exception as exc:
                        long_poll.update(ok=False, error=repr(exc))
                    long_poll["elapsed"] = time.monotonic() - t0

                long_thread = threading.Thread(target=long, daemon=True)
                long_thread.start()
            t0 = time.monotonic()
            print(f"{name} ...", flush=True)
            try:
                out = fn(env)
                procs += out or []
                print(f"{name}: ok ({time.monotonic() - t0:.1f}s)", flush=True)
            except CheckFailed as exc:
                FAILURES.append(f"{name}: {exc}")
                print(f"{name}: FAILED: {exc}", flush=True)
            except Exception:
                FAILURES.append(f"{name}: {traceback.format_exc()}")
                print(f"{name}: ERROR:\n{traceback.format_exc()}", flush=True)
            finally:
                env.ctl.clear()
        if long_thread is not None:
            print("long poll (20 s) ...", flush=True)
            long_thread.join(40)
            try:
                check(long_poll.get("ok") and long_poll["msgs"] == 0 and 19.5 <= long_poll["elapsed"] < 25,
                      f"a 20 s long poll passes through: {long_poll}")
                print(f"long poll: ok ({long_poll['elapsed']:.1f}s)", flush=True)
            except CheckFailed as exc:
                FAILURES.append(f"long poll: {exc}")
                print(f"long poll: FAILED: {exc}", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()

    took = time.monotonic() - t_start
    if FAILURES:
        print(f"\nFAILED: {len(FAILURES)} scenario(s), {CHECKS} checks, {took:.1f}s")
        for f in FAILURES:
            print(f"  - {f}")
        sys.exit(1)
    print(f"\nall passed: {CHECKS} checks, {took:.1f}s")


if __name__ == "__main__":
    main()
