#!/usr/bin/env python3
"""Self-check for the emulator's realism knobs (README.md, "Realism knobs"): starts the
emulator, drives it with boto3 and plain HTTP, and exits non-zero on the first failed check.

    .venv/bin/python tests/emulator/check_knobs.py [-v]

About 10 s. Checks: knobs off = the old behaviour; the control API refuses unknown knobs and
bad values; autoscaling_throttle (Throttling / Rate exceeded after the burst, refill, per key,
shared, counted in GET /calls); notification_delay (the hook's timer runs from the start of
the wait), describe_lag, imds_target_lag (per group and per instance) and no_action_window on
one scale-in, each at its own time; receive_sample (subsets, empty short polls, long polls that
still return), receive_order, latency; the fault proxy (tests/faults/) in front of the emulator;
and that a seed reproduces a sample sequence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
AMI = "ami-12c6146b"
ACCOUNT = "123456789012"
REGION = "us-east-1"
STATE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"

CHECKS = 0
VERBOSE = "-v" in sys.argv


def check(cond: Any, what: str) -> None:
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1
    if VERBOSE:
        print(f"  ok: {what}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Emulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "emulator.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        self.endpoint, self.control = ready["endpoint"], ready["control"]

    def realism(self, body: dict[str, Any], status: int = 200) -> Any:
        got, text = http("POST", f"{self.control}/realism", body)
        check(got == status, f"POST /realism {body} -> {got} {text} (expected {status})")
        return json.loads(text)

    def get(self, path: str) -> Any:
        status, text = http("GET", f"{self.control}{path}")
        check(status == 200, f"GET {path} -> {status}")
        return json.loads(text)

    def clients(self, key: str) -> tuple[Any, Any, Any]:
        kw = dict(endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=key,
                  aws_secret_access_key="x", config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        return boto3.client("autoscaling", **kw), boto3.client("sqs", **kw), boto3.client("ec2", **kw)

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Imds:
    def __init__(self, emu: Emulator, instance_id: str) -> None:
        status, text = http("POST", f"{emu.control}/imds", {"instance_id": instance_id})
        check(status == 200, f"POST /imds -> {status}")
        self.endpoint = json.loads(text)["endpoint"]
        _, self.token = http("PUT", f"{self.endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "600"})

    def state(self) -> str:
        status, text = http("GET", f"{self.endpoint}{STATE_PATH}", headers={"X-aws-ec2-metadata-token": self.token})
        return text if status == 200 else str(status)


def error_of(fn: Callable[..., Any], **params: Any) -> tuple[int, str, str] | None:
    """(HTTP status, code, message) of a failed call, or None when it succeeds."""
    try:
        fn(**params)
    except ClientError as err:
        e = err.response["Error"]
        return err.response["ResponseMetadata"]["HTTPStatusCode"], e.get("Code", ""), e.get("Message", "")
    return None


# ---------------------------------------------------------------------------
def control_api(emu: Emulator) -> None:
    print("control API")
    off = emu.get("/realism")
    check(off == {"groups": {}, "instances": {}, "queues": {}, "seed": None, "autoscaling_throttle": None}, f"all off: {off}")
    emu.realism({"group": "g", "bogus": 1}, 400)
    emu.realism({"queue": "q", "notification_delay": 1}, 400)  # a group knob on a queue
    emu.realism({"instance": "i-1", "describe_lag": 1}, 400)  # only imds_target_lag per instance
    emu.realism({"notification_delay": 1}, 400)  # no scope: global knobs only
    emu.realism({"group": "g", "queue": "q", "describe_lag": 1}, 400)
    emu.realism({"group": "g", "describe_lag": -1}, 400)
    emu.realism({"group": "g", "describe_lag": "soon"}, 400)
    emu.realism({"queue": "q", "receive_sample": 1.5}, 400)
    emu.realism({"queue": "q", "receive_order": "random"}, 400)
    emu.realism({"seed": "x"}, 400)
    emu.realism({"autoscaling_throttle": {"rate": 1}}, 400)
    emu.realism({"autoscaling_throttle": {"rate": 1, "burst": 0}}, 400)
    emu.realism({"autoscaling_throttle": {"rate": 1, "burst": 2, "per": "x"}, }, 400)
    fault = emu.realism({"fault_rate": 0.1}, 400)
    check("tests/faults/proxy.py" in fault["error"], f"fault_rate refused with a pointer to the proxy: {fault}")
    check(emu.get("/realism")["groups"] == {}, "nothing was set by the refused requests")


def knobs_off(emu: Emulator) -> None:
    print("knobs off: the old behaviour")
    asg, sqs, _ = emu.clients("off")
    url = sqs.create_queue(QueueName="off")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    t = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30).get("Messages", [])
    check(len(got) == 5, f"a short poll gives every visible message: {len(got)}")
    check(time.monotonic() - t < 0.3, "no latency")
    for _ in range(30):  # no throttle by default
        asg.describe_auto_scaling_groups()


def throttle(emu: Emulator) -> None:
    print("autoscaling_throttle")
    emu.realism({"autoscaling_throttle": {"rate": 2, "burst": 4, "keys": ["slow", "fleet-a", "fleet-b"]}})
    slow, _, _ = emu.clients("slow")
    other, _, _ = emu.clients("other")
    results = [error_of(slow.describe_auto_scaling_instances) for _ in range(6)]
    check(results[:4] == [None] * 4, f"the burst passes: {results}")
    check(results[4] == (400, "Throttling", "Rate exceeded") and results[5] == results[4],
          f"then HTTP 400 Throttling / Rate exceeded: {results}")
    check(all(error_of(other.describe_auto_scaling_instances) is None for _ in range(8)), "a key not listed is not throttled")
    time.sleep(0.55)  # 2 tokens/s: one more call
    check(error_of(slow.describe_auto_scaling_groups) is None, "the bucket refills")
    check(error_of(slow.describe_auto_scaling_groups) == (400, "Throttling", "Rate exceeded"), "one token only")
    calls = emu.get("/calls")
    check(calls["throttled"].get("slow") == {"autoscaling": {"DescribeAutoScalingInstances": 2, "DescribeAutoScalingGroups": 1}},
          f"GET /calls throttled: {calls['throttled']}")
    check("other" not in calls["throttled"], "no throttled entry for the other key")
    # shared: one bucket for the listed keys (a fleet in one account)
    emu.realism({"autoscaling_throttle": {"rate": 0, "burst": 3, "keys": ["fleet-a", "fleet-b"], "shared": True}})
    a, _, _ = emu.clients("fleet-a")
    b, _, _ = emu.clients("fleet-b")
    seq = [error_of(c.describe_auto_scaling_groups) for c in (a, b, a, b)]
    check(seq[:3] == [None] * 3 and seq[3] == (400, "Throttling", "Rate exceeded"), f"shared bucket: {seq}")
    check(emu.realism({"autoscaling_throttle": None})["autoscaling_throttle"] is None, "throttle off")
    check(error_of(b.describe_auto_scaling_groups) is None, "off again")


def lifecycle(emu: Emulator) -> None:
    print("notification_delay, describe_lag, imds_target_lag, no_action_window")
    asg, sqs, _ = emu.clients("lifecycle")
    qurl = sqs.create_queue(QueueName="hooks")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=qurl, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    asg.create_launch_configuration(LaunchConfigurationName="lc", ImageId=AMI, InstanceType="t3.micro")

    def group(name: str, size: int) -> list[str]:
        asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName="lc", MinSize=0, MaxSize=5,
                                      DesiredCapacity=size, AvailabilityZones=["us-east-1a"])
        asg.put_lifecycle_hook(AutoScalingGroupName=name, LifecycleHookName="drain", HeartbeatTimeout=30,
                               LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", NotificationTargetARN=qarn,
                               DefaultResult="CONTINUE")
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
        return [i["InstanceId"] for i in g["Instances"]]  # victims go oldest first (this order)

    def messages() -> list[dict[str, Any]]:
        out = []
        for m in sqs.receive_message(QueueUrl=qurl, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
            sqs.delete_message(QueueUrl=qurl, ReceiptHandle=m["ReceiptHandle"])
            body = json.loads(m["Body"])
            if body.get("LifecycleTransition"):
                out.append(body)
        return out

    def described(iid: str) -> str:
        (inst,) = asg.describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"]
        return inst["LifecycleState"]

    args = dict(AutoScalingGroupName="slow", LifecycleHookName="drain")
    ids = group("slow", 2)
    imds = Imds(emu, ids[0])
    emu.realism({"group": "slow", "notification_delay": 1.0, "describe_lag": 0.5, "imds_target_lag": 2.5, "no_action_window": 2.0})
    messages()  # the test notification
    t0 = time.monotonic()
    asg.set_desired_capacity(AutoScalingGroupName="slow", DesiredCapacity=1)
    check(described(ids[0]) == "InService" and imds.state() == "InService", "at once: Describe and IMDS still InService")
    seen: dict[str, float] = {}
    refused: list[tuple[int, str, str] | None] = []
    token = None
    while time.monotonic() - t0 < 5 and len(seen) < 4:
        now = time.monotonic() - t0
        if "describe" not in seen and described(ids[0]) == "Terminating:Wait":
            seen["describe"] = now
            check(imds.state() == "InService", "IMDS lag is independent of describe_lag")
        if "imds" not in seen and imds.state() == "Terminated":
            seen["imds"] = now
        if "message" not in seen:
            for msg in messages():
                seen["message"] = now
                token = msg["LifecycleActionToken"]
                (act,) = [a for a in emu.get("/actions") if a["token"] == token]
                check(msg["Time"] == act["started_at"], "the message's Time is the start of the wait")
                check(act["seconds_to_timeout"] < 29.2, f"the timer ran during the delay: {act['seconds_to_timeout']}")
                refused.append(error_of(asg.complete_lifecycle_action, LifecycleActionToken=token,
                                        LifecycleActionResult="CONTINUE", **args))
                refused.append(error_of(asg.record_lifecycle_action_heartbeat, InstanceId=ids[0], **args))
        elif "heartbeat" not in seen and error_of(asg.record_lifecycle_action_heartbeat, LifecycleActionToken=token, **args) is None:
            seen["heartbeat"] = time.monotonic() - t0
        time.sleep(0.05)
    if VERBOSE:
        print(f"  first seen (s after scale-in): {seen}")
    check(0.45 <= seen.get("describe", -1) <= 0.95, f"describe_lag 0.5: {seen}")
    check(0.95 <= seen.get("message", -1) <= 1.6, f"notification_delay 1.0: {seen}")
    check(2.45 <= seen.get("imds", -1) <= 3.0, f"imds_target_lag 2.5: {seen}")
    check(1.95 <= seen.get("heartbeat", -1) <= 2.4, f"no_action_window 2.0: {seen}")
    check(refused == [(400, "ValidationError", f"No active Lifecycle Action found with token {token}"),
                      (400, "ValidationError", f"No active Lifecycle Action found with instance ID {ids[0]}")],
          f"inside the window: AWS's 'No active' errors: {refused}")
    check(error_of(asg.complete_lifecycle_action, LifecycleActionToken=token, LifecycleActionResult="CONTINUE", **args) is None,
          "after the window Complete is accepted")
    check(imds.state() == "Terminated", "terminated")

    # Knobs off (another group): everything at once, as before.
    args = dict(AutoScalingGroupName="quick", LifecycleHookName="drain")
    ids = group("quick", 3)
    first, second = Imds(emu, ids[0]), Imds(emu, ids[1])
    messages()
    asg.set_desired_capacity(AutoScalingGroupName="quick", DesiredCapacity=2)
    check(described(ids[0]) == "Terminating:Wait" and first.state() == "Terminated", "knobs off: Describe and IMDS at once")
    (msg,) = messages()
    check(msg["EC2InstanceId"] == ids[0], "knobs off: the message at once")
    check(error_of(asg.complete_lifecycle_action, InstanceId=ids[0], LifecycleActionResult="CONTINUE", **args) is None,
          "knobs off: Complete at once")
    # imds_target_lag for one instance only
    emu.realism({"instance": ids[1], "imds_target_lag": 0.6})
    t0 = time.monotonic()
    asg.set_desired_capacity(AutoScalingGroupName="quick", DesiredCapacity=1)
    check(described(ids[1]) == "Terminating:Wait" and second.state() == "InService", "per-instance IMDS lag")
    while second.state() != "Terminated" and time.monotonic() - t0 < 2:
        time.sleep(0.05)
    lag = time.monotonic() - t0
    check(0.55 <= lag <= 1.1, f"per-instance imds_target_lag 0.6: {lag:.2f}")


def receive(emu: Emulator) -> None:
    print("receive_sample, receive_order, latency, sent_age, date_behind")
    _, sqs, _ = emu.clients("sqs")

    def queue(name: str, n: int, **knobs: Any) -> str:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        for i in range(n):
            sqs.send_message(QueueUrl=url, MessageBody=str(i))
        if knobs:
            emu.realism({"queue": name, **knobs})
        return url

    def take(url: str, n: int = 10, wait: int = 0) -> list[int]:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=n, WaitTimeSeconds=wait, VisibilityTimeout=60)
        return [int(m["Body"]) for m in got.get("Messages", [])]

    emu.realism({"seed": 1})
    url = queue("subset", 8, receive_sample=0.5)
    sizes = [len(take(url)) for _ in range(3)]
    check(0 < sizes[0] < 8 and sum(sizes) < 8, f"receive_sample 0.5: subsets of 8 visible messages: {sizes}")
    url = queue("single", 1, receive_sample=0.3)
    polls = 0
    while not take(url) and polls < 40:
        polls += 1
    check(1 <= polls < 40, f"short polls gave nothing {polls} times before the message came")
    url = queue("long", 1, receive_sample=0.1)
    took = []
    for _ in range(3):
        t = time.monotonic()
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5).get("Messages", [])
        took.append(round(time.monotonic() - t, 2))
        check(len(got) == 1, f"a long poll returns the message once it is sampled ({took})")
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0)
    check(max(took) >= 0.1 and sum(took) < 6, f"long polls sampled again until they had it: {took}")

    url = queue("strict", 30, receive_order="oldest_first")
    check(take(url) == list(range(10)), "oldest_first: moto's order")
    url = queue("jitter", 30, receive_order="oldest_first_jitter")
    got = take(url)
    check(len(got) == 10 and max(got) < 13 and got != list(range(10)), f"oldest_first_jitter: about oldest first: {got}")
    url = queue("shuffled", 30)
    got = take(url)
    check(len(got) == 10 and got != list(range(10)) and max(got) >= 13, f"knobs off: shuffled as before: {got}")

    url = queue("slow", 0, latency=0.4)
    fast_url = queue("fast", 0)
    t = time.monotonic()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    slow = time.monotonic() - t
    t = time.monotonic()
    sqs.send_message(QueueUrl=fast_url, MessageBody="x")
    fast = time.monotonic() - t
    check(0.4 <= slow < 0.8 and fast < 0.3, f"latency 0.4: {slow:.3f}s vs {fast:.3f}s")
    t = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    check(len(got) == 1 and time.monotonic() - t >= 0.4, "latency on a receive too")

    def sent(url: str) -> float:
        got = sqs.receive_message(QueueUrl=url, AttributeNames=["SentTimestamp"], VisibilityTimeout=60)
        return int(got["Messages"][0]["Attributes"]["SentTimestamp"]) / 1000

    old_url = queue("aged", 0, sent_age=3600)
    sqs.send_message(QueueUrl=old_url, MessageBody="x")
    age = time.time() - sent(old_url)
    check(3599 <= age < 3610, f"sent_age 3600: SentTimestamp {age:.1f}s in the past")
    young_url = queue("young", 1)
    age = time.time() - sent(young_url)
    check(0 <= age < 10, f"knob off: SentTimestamp is the sending time ({age:.1f}s ago)")

    from email.utils import parsedate_to_datetime

    def date(url: str) -> float:
        got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        return parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()

    behind_url = queue("behind", 0, date_behind=86400)
    lag = time.time() - date(behind_url)
    check(86399 <= lag < 86410, f"date_behind 86400: the Date header {lag:.0f}s in the past")
    lag = time.time() - date(young_url)
    check(-2 < lag < 5, f"knob off: the Date header is now ({lag:.1f}s ago)")


def deletions(emu: Emulator) -> None:
    print("GET /deleted/QUEUE: who deleted which message")
    _, sqs, _ = emu.clients("deleter")
    _, other, _ = emu.clients("holder")
    url = sqs.create_queue(QueueName="deletions")["QueueUrl"]
    ids = [sqs.send_message(QueueUrl=url, MessageBody=str(i))["MessageId"] for i in range(3)]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)["Messages"]
    check(len(got) == 3, f"three received: {len(got)}")
    by_id = {m["MessageId"]: m["ReceiptHandle"] for m in got}
    sqs.delete_message(QueueUrl=url, ReceiptHandle=by_id[ids[0]])
    sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "b", "ReceiptHandle": by_id[ids[1]]}])
    # Held out of sight (visibility 60 s) by another key, not deleted.
    other.change_message_visibility(QueueUrl=url, ReceiptHandle=by_id[ids[2]], VisibilityTimeout=60)
    # A second delete of the same handle is accepted by SQS and records nothing new.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=by_id[ids[0]])
    check(emu.get("/deleted/deletions") == {ids[0]: "deleter", ids[1]: "deleter"},
          f"the deletions by key: {emu.get('/deleted/deletions')}")
    http("POST", f"{emu.control}/calls/reset")
    check(len(emu.get("/deleted/deletions")) == 2, "a reset of the counts keeps the deletions")
    check(emu.get("/deleted/nosuchqueue") == {}, "a queue with none: {}")


def seed(emu: Emulator) -> None:
    print("seed")
    _, sqs, _ = emu.clients("seed")

    def run(seed: int) -> list[list[int]]:
        http("POST", f"{emu.endpoint}/moto-api/reset")  # clears the knobs too
        emu.realism({"seed": seed})
        url = sqs.create_queue(QueueName="seeded")["QueueUrl"]
        for i in range(20):
            sqs.send_message(QueueUrl=url, MessageBody=str(i))
        emu.realism({"queue": "seeded", "receive_sample": 0.4, "receive_order": "oldest_first_jitter"})
        out = []
        for _ in range(6):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=4, WaitTimeSeconds=0, VisibilityTimeout=60)
            out.append([int(m["Body"]) for m in got.get("Messages", [])])
        return out

    a, b, c = run(7), run(7), run(8)
    if VERBOSE:
        print(f"  seed 7: {a}\n  seed 8: {c}")
    check(a == b, f"the same seed gives the same samples: {a} vs {b}")
    check(a != c, "another seed gives other samples")
    check(emu.get("/realism")["queues"]["seeded"]["receive_sample"] == 0.4, "GET /realism lists queue knobs")
    http("POST", f"{emu.endpoint}/moto-api/reset")
    check(emu.get("/realism")["seed"] is None, "reset clears the seed")


def with_fault_proxy(emu: Emulator) -> None:
    """Transient faults come from tests/faults/proxy.py in front of the emulator; the
    emulator's throttling passes through it (README.md, "Transient faults")."""
    print("with tests/faults/proxy.py in front")
    proxy = os.path.join(os.path.dirname(HERE), "faults", "proxy.py")
    px = subprocess.Popen([sys.executable, proxy, "--upstream", emu.endpoint],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(px.stdout.readline())
        emu.realism({"autoscaling_throttle": {"rate": 0, "burst": 1, "keys": ["proxied"]}})
        status, _ = http("POST", info["control"] + "/rules", {"match": "DescribeAutoScalingGroups", "status": 503, "count": 1})
        check(status == 200, "proxy rule")
        kw = dict(endpoint_url=info["url"], region_name=REGION, aws_access_key_id="proxied", aws_secret_access_key="x",
                  config=Config(retries={"total_max_attempts": 1}))
        asg = boto3.client("autoscaling", **kw)
        got = [error_of(asg.describe_auto_scaling_groups) for _ in range(3)]
        check(got == [(503, "ServiceUnavailable", "Injected fault"), None, (400, "Throttling", "Rate exceeded")],
              f"a proxy fault (not counted by the emulator), a call, then the emulator's throttle: {got}")
        check(emu.get("/calls")["throttled"].get("proxied") == {"autoscaling": {"DescribeAutoScalingGroups": 1}}, "throttled once")
    finally:
        px.stdin.close()
        px.wait(timeout=5)
        emu.realism({"autoscaling_throttle": None})


def main() -> None:
    t0 = time.monotonic()
    emu = Emulator()
    try:
        control_api(emu)
        knobs_off(emu)
        throttle(emu)
        lifecycle(emu)
        receive(emu)
        deletions(emu)
        with_fault_proxy(emu)
        seed(emu)
    finally:
        emu.stop()
    print(f"knob checks passed: {CHECKS} checks in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
