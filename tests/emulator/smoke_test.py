#!/usr/bin/env python3
"""Self-check for emulator.py: starts it, drives it with boto3 and plain HTTP,
and exits non-zero on the first failed check.

    .venv/bin/python tests/emulator/smoke_test.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
AMI = "ami-12c6146b"  # one of the AMIs moto ships (moto's EXAMPLE_AMI_ID)
ACCOUNT = "123456789012"
REGION = "us-east-1"

LIFECYCLE_KEYS = {
    "Origin", "Destination", "LifecycleHookName", "AccountId", "RequestId",
    "LifecycleTransition", "AutoScalingGroupName", "Service", "Time",
    "EC2InstanceId", "LifecycleActionToken",
}
TEST_KEYS = {"AccountId", "RequestId", "AutoScalingGroupARN", "AutoScalingGroupName", "Service", "Event", "Time"}

CHECKS = 0


def check(cond: Any, what: str) -> None:
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


# --- plain HTTP helpers -------------------------------------------------------
def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


class Imds:
    def __init__(self, control: str, instance_id: str):
        status, _, body = http("POST", f"{control}/imds", {"instance_id": instance_id})
        check(status == 200, f"POST /imds -> {status} {body}")
        self.control = control
        self.endpoint = json.loads(body)["endpoint"]
        self.port = self.endpoint.rsplit(":", 1)[1]
        self.token = self.new_token()

    def new_token(self, ttl: int = 60) -> str:
        status, headers, body = http("PUT", f"{self.endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
        check(status == 200 and body, f"token PUT -> {status}")
        check(headers.get("X-aws-ec2-metadata-token-ttl-seconds") == str(ttl), f"TTL header not echoed: {headers}")
        return body

    def get(self, path: str, token: str | None = "default") -> tuple[int, str]:
        token = self.token if token == "default" else token
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        status, _, body = http("GET", f"{self.endpoint}{path}", headers=headers)
        return status, body

    def override(self, **kw: Any) -> None:
        status, _, body = http("POST", f"{self.control}/imds/{self.port}/override", kw)
        check(status == 200, f"override -> {status} {body}")


# --- test body ----------------------------------------------------------------
def main() -> None:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "emulator.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        startup = time.monotonic() - t0
        ready = json.loads(line)
        check(set(ready) == {"endpoint", "control"}, f"ready line: {line!r}")
        print(f"emulator ready in {startup:.2f}s: {line.strip()}")
        run(ready["endpoint"], ready["control"])
        # stdin EOF must stop the emulator.
        proc.stdin.close()
        rc = proc.wait(timeout=5)
        check(rc == 0, f"exit code after stdin EOF: {rc}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGTERM must stop it cleanly too.
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "emulator.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        check(rc == 0, f"exit code after SIGTERM: {rc}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"smoke test passed: {CHECKS} checks in {time.monotonic() - t0:.1f}s (start-up {startup:.2f}s)")


def run(endpoint: str, control: str) -> None:
    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test",
              config=Config(retries={"max_attempts": 1}))
    asg = boto3.client("autoscaling", **kw)
    ec2 = boto3.client("ec2", **kw)
    sqs = boto3.client("sqs", **kw)
    sns = boto3.client("sns", **kw)

    check(http("GET", f"{control}/health")[2] == '{"ok": true}', "health")

    qurl = sqs.create_queue(QueueName="lifecycle")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=qurl, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    check(qarn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:lifecycle", qarn)

    def receive(url: str = qurl, n: int = 1, wait: float = 3.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait
        while len(out) < n and time.monotonic() < deadline:
            resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in resp.get("Messages", []):
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                out.append(json.loads(m["Body"]))
        check(len(out) == n, f"expected {n} message(s), got {out}")
        return out

    def instances(group: str) -> dict[str, str]:
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        return {i["InstanceId"]: i["LifecycleState"] for i in g["Instances"]}

    def ec2_state(iid: str) -> str:
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]

    def validation_error(fn: Any, text: str, **params: Any) -> None:
        try:
            fn(**params)
        except ClientError as err:
            e = err.response["Error"]
            check(err.response["ResponseMetadata"]["HTTPStatusCode"] == 400, f"status {err.response['ResponseMetadata']}")
            check(e["Code"] == "ValidationError", f"code {e}")
            check(e["Message"].startswith(text), f"message {e['Message']!r} !~ {text!r}")
            return
        raise AssertionError(f"no error from {fn.__name__}({params})")

    def actions() -> list[dict[str, Any]]:
        return json.loads(http("GET", f"{control}/actions")[2])

    # --- group + hook -------------------------------------------------------
    asg.create_launch_configuration(LaunchConfigurationName="lc", ImageId=AMI, InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName="web", LaunchConfigurationName="lc", MinSize=0, MaxSize=5,
                                  DesiredCapacity=3, AvailabilityZones=["us-east-1a"])
    check(len(instances("web")) == 3, "3 instances")
    asg.put_lifecycle_hook(AutoScalingGroupName="web", LifecycleHookName="drain",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=3,
                           DefaultResult="CONTINUE", NotificationTargetARN=qarn,
                           RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook", NotificationMetadata='{"k":"v"}')
    (msg,) = receive()
    check(set(msg) == TEST_KEYS and msg["Event"] == "autoscaling:TEST_NOTIFICATION" and msg["AutoScalingGroupName"] == "web"
          and msg["Service"] == "AWS Auto Scaling" and msg["AccountId"] == ACCOUNT, f"test notification {msg}")
    (hook,) = asg.describe_lifecycle_hooks(AutoScalingGroupName="web")["LifecycleHooks"]
    check(hook["NotificationTargetARN"] == qarn and hook["HeartbeatTimeout"] == 3 and hook["GlobalTimeout"] == 300
          and hook["DefaultResult"] == "CONTINUE" and hook["RoleARN"].endswith(":role/hook")
          and hook["NotificationMetadata"] == '{"k":"v"}', f"described hook {hook}")
    validation_error(asg.put_lifecycle_hook, "Unable to publish test message", AutoScalingGroupName="web",
                     LifecycleHookName="bad", LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                     NotificationTargetARN=f"arn:aws:sqs:{REGION}:{ACCOUNT}:missing")

    # --- scale-in -> Terminating:Wait ------------------------------------------
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=2)
    states = instances("web")
    waiting = [i for i, s in states.items() if s == "Terminating:Wait"]
    check(len(states) == 3 and len(waiting) == 1, f"after scale-in: {states}")
    victim = waiting[0]
    other = next(i for i, s in states.items() if s == "InService")
    (msg,) = receive()
    check(set(msg) == LIFECYCLE_KEYS | {"NotificationMetadata"}, f"message keys {sorted(msg)}")
    check(msg["EC2InstanceId"] == victim and msg["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
          and msg["Origin"] == "AutoScalingGroup" and msg["Destination"] == "EC2" and msg["LifecycleHookName"] == "drain"
          and msg["NotificationMetadata"] == '{"k":"v"}' and msg["Time"].endswith("Z") and len(msg["Time"]) == 24, f"message {msg}")
    token = msg["LifecycleActionToken"]
    (inst,) = asg.describe_auto_scaling_instances(InstanceIds=[victim])["AutoScalingInstances"]
    check(inst["LifecycleState"] == "Terminating:Wait", inst)
    started = time.monotonic()

    # --- fake IMDS ------------------------------------------------------------
    imds_v, imds_o = Imds(control, victim), Imds(control, other)
    check(imds_v.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Terminated"), "victim target state")
    check(imds_o.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "InService"), "other target state")
    check(imds_v.get("/latest/meta-data/instance-id", token=None)[0] == 401, "GET without token -> 401")
    check(imds_v.get("/latest/meta-data/instance-id", token="bogus")[0] == 401, "GET with bad token -> 401")
    check(imds_v.get("/latest/meta-data/instance-id") == (200, victim), "instance-id")
    check(imds_v.get("/latest/meta-data/placement/region") == (200, REGION), "region")
    check(imds_v.get("/latest/meta-data/tags/instance/aws:autoscaling:groupName") == (200, "web"), "group tag")
    check("aws:autoscaling:groupName" in imds_v.get("/latest/meta-data/tags/instance")[1].split("\n"), "tag list")
    doc = json.loads(imds_v.get("/latest/dynamic/instance-identity/document")[1])
    check(doc["instanceId"] == victim and doc["accountId"] == ACCOUNT and doc["imageId"] == AMI, f"identity doc {doc}")
    check(imds_v.get("/latest/meta-data/spot/instance-action")[0] == 404, "spot 404")
    check(http("PUT", f"{imds_v.endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "0"})[0] == 400, "ttl 0 -> 400")
    check(http("PUT", f"{imds_v.endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                                                    "X-Forwarded-For": "1.2.3.4"})[0] == 403, "XFF -> 403")
    spot = '{"action":"terminate","time":"2030-01-01T00:00:00Z"}'
    imds_v.override(path="/latest/meta-data/spot/instance-action", status=200, body=spot)
    check(imds_v.get("/latest/meta-data/spot/instance-action") == (200, spot), "spot override")
    imds_v.override(path="/latest/meta-data/spot/instance-action", clear=True)
    check(imds_v.get("/latest/meta-data/spot/instance-action")[0] == 404, "spot override cleared")
    imds_v.override(tags_enabled=False)
    check(imds_v.get("/latest/meta-data/tags/instance")[0] == 404, "tags disabled")
    imds_v.override(fail_token=True)
    check(http("PUT", f"{imds_v.endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 503, "fail_token")
    imds_v.override(fail_token=False, tags_enabled=True)
    check(http("POST", f"{control}/imds", {"instance_id": "i-00000000000000000"})[0] == 404, "unknown instance -> 404")

    # --- heartbeat, then complete by token --------------------------------------
    time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="web", LifecycleHookName="drain", LifecycleActionToken=token)
    time.sleep(max(0.0, 3.6 - (time.monotonic() - started)))  # past the original 3 s
    check(instances("web").get(victim) == "Terminating:Wait", "heartbeat extended the wait")
    (act,) = [a for a in actions() if a["token"] == token]
    check(act["state"] == "pending" and act["heartbeats"] == 1, act)
    asg.complete_lifecycle_action(AutoScalingGroupName="web", LifecycleHookName="drain", LifecycleActionToken=token,
                                  LifecycleActionResult="CONTINUE")
    check(victim not in instances("web") and len(instances("web")) == 2, "victim removed")
    check(asg.describe_auto_scaling_instances(InstanceIds=[victim])["AutoScalingInstances"] == [], "victim gone")
    check(ec2_state(victim) == "terminated", "victim terminated in EC2")
    check(imds_v.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Terminated"), "terminated target state")
    check(http("DELETE", f"{control}/imds/{imds_v.port}")[0] == 200, "DELETE imds")

    # --- errors -------------------------------------------------------------------
    validation_error(asg.complete_lifecycle_action, f"No active Lifecycle Action found with token {token}",
                     AutoScalingGroupName="web", LifecycleHookName="drain", LifecycleActionToken=token, LifecycleActionResult="CONTINUE")
    validation_error(asg.record_lifecycle_action_heartbeat, f"No active Lifecycle Action found with instance ID {victim}",
                     AutoScalingGroupName="web", LifecycleHookName="drain", InstanceId=victim)
    validation_error(asg.complete_lifecycle_action, "Either LifecycleActionToken or InstanceId",
                     AutoScalingGroupName="web", LifecycleHookName="drain", LifecycleActionResult="CONTINUE")
    validation_error(asg.complete_lifecycle_action, "Lifecycle Hook 'nope' not found",
                     AutoScalingGroupName="web", LifecycleHookName="nope", InstanceId=other, LifecycleActionResult="CONTINUE")
    # The raw wire format the Rust SDK parses.
    req = urllib.request.Request(endpoint, method="POST", data=(
        f"Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName=web&LifecycleHookName=drain"
        f"&LifecycleActionResult=CONTINUE&InstanceId={victim}").encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20240101/{REGION}/autoscaling/aws4_request, SignedHeaders=host, Signature=x"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("raw CompleteLifecycleAction succeeded")
    except urllib.error.HTTPError as err:
        body = err.read().decode()
        check(err.code == 400 and "<Code>ValidationError</Code>" in body
              and f"<Message>No active Lifecycle Action found with instance ID {victim}</Message>" in body, f"raw error {err.code} {body}")

    # --- timeout applies DefaultResult --------------------------------------------
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=1)
    (msg,) = receive()
    victim2, t_start = msg["EC2InstanceId"], time.monotonic()
    while instances("web").get(victim2) == "Terminating:Wait" and time.monotonic() - t_start < 6:
        time.sleep(0.05)
    waited = time.monotonic() - t_start
    check(victim2 not in instances("web") and waited < 4.5, f"default result after {waited:.2f}s")
    check(ec2_state(victim2) == "terminated", "timed-out victim terminated")
    (act,) = [a for a in actions() if a["token"] == msg["LifecycleActionToken"]]
    check(act["state"] == "timed-out" and act["result"] == "CONTINUE", act)
    # The emulator's own timestamps: the timeout fires within ~100 ms of 3 s.
    span = (parse_time(act["finished_at"]) - parse_time(act["started_at"])).total_seconds()
    check(2.95 <= span <= 3.15, f"timeout accuracy: {span:.3f}s")

    # --- scale out (no launch hook: straight to InService), complete by InstanceId --
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=3)
    check(sorted(instances("web").values()) == ["InService"] * 3, f"scale-out {instances('web')}")
    asg.update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=2)  # lowers desired to 2
    (msg,) = receive()
    victim3 = msg["EC2InstanceId"]
    check(instances("web")[victim3] == "Terminating:Wait", "UpdateAutoScalingGroup scale-in waits")
    asg.complete_lifecycle_action(AutoScalingGroupName="web", LifecycleHookName="drain", InstanceId=victim3,
                                  LifecycleActionResult="ABANDON")
    check(victim3 not in instances("web") and ec2_state(victim3) == "terminated", "complete by InstanceId")
    asg.update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=5)

    # --- TerminateInstanceInAutoScalingGroup --------------------------------------
    for decrement in (True, False):
        before = instances("web")
        desired = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])["AutoScalingGroups"][0]["DesiredCapacity"]
        target = next(iter(before))
        asg.terminate_instance_in_auto_scaling_group(InstanceId=target, ShouldDecrementDesiredCapacity=decrement)
        (msg,) = receive()
        check(msg["EC2InstanceId"] == target, msg)
        after = instances("web")
        in_service = [i for i, s in after.items() if s == "InService"]
        want = desired - 1 if decrement else desired  # replacement only without decrement
        check(after[target] == "Terminating:Wait" and len(in_service) == want, f"terminate decrement={decrement}: {after}")
        asg.terminate_instance_in_auto_scaling_group(InstanceId=target, ShouldDecrementDesiredCapacity=decrement)  # no-op
        check(len(instances("web")) == len(after), "repeat TerminateInstance is a no-op")
        asg.complete_lifecycle_action(AutoScalingGroupName="web", LifecycleHookName="drain",
                                      LifecycleActionToken=msg["LifecycleActionToken"], LifecycleActionResult="CONTINUE")
        check(target not in instances("web") and ec2_state(target) == "terminated", "terminated after complete")

    # --- two terminating hooks ----------------------------------------------------
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=3)
    asg.put_lifecycle_hook(AutoScalingGroupName="web", LifecycleHookName="second",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=60,
                           NotificationTargetARN=qarn, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    receive()  # test notification
    (h2,) = asg.describe_lifecycle_hooks(AutoScalingGroupName="web", LifecycleHookNames=["second"])["LifecycleHooks"]
    check(h2["DefaultResult"] == "ABANDON" and h2["GlobalTimeout"] == 6000 and "NotificationMetadata" not in h2, h2)
    for first_result in ("CONTINUE", "ABANDON"):
        desired = len([s for s in instances("web").values() if s == "InService"])
        asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=desired - 1)
        msgs = {m["LifecycleHookName"]: m for m in receive(n=2)}
        check(set(msgs) == {"drain", "second"}, msgs)
        check("NotificationMetadata" not in msgs["second"], "no metadata when unset")
        v = msgs["drain"]["EC2InstanceId"]
        asg.complete_lifecycle_action(AutoScalingGroupName="web", LifecycleHookName="drain", InstanceId=v,
                                      LifecycleActionResult=first_result)
        if first_result == "CONTINUE":
            check(instances("web").get(v) == "Terminating:Wait", "waits for the second hook")
            asg.complete_lifecycle_action(AutoScalingGroupName="web", LifecycleHookName="second", InstanceId=v,
                                          LifecycleActionResult="CONTINUE")
        else:
            (a2,) = [a for a in actions() if a["token"] == msgs["second"]["LifecycleActionToken"]]
            check(a2["state"] == "cancelled", f"ABANDON ends the other hook: {a2}")
        check(v not in instances("web") and ec2_state(v) == "terminated", f"gone after {first_result}")
    asg.delete_lifecycle_hook(AutoScalingGroupName="web", LifecycleHookName="second")

    # --- SNS target -----------------------------------------------------------------
    topic = sns.create_topic(Name="hooks")["TopicArn"]
    q2url = sqs.create_queue(QueueName="via-sns")["QueueUrl"]
    q2arn = sqs.get_queue_attributes(QueueUrl=q2url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=q2arn)
    asg.put_lifecycle_hook(AutoScalingGroupName="web", LifecycleHookName="via-sns",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=60,
                           NotificationTargetARN=topic, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    (env,) = receive(q2url)
    check(env["Type"] == "Notification" and env["TopicArn"] == topic
          and json.loads(env["Message"])["Event"] == "autoscaling:TEST_NOTIFICATION", f"SNS envelope {env}")
    asg.delete_lifecycle_hook(AutoScalingGroupName="web", LifecycleHookName="via-sns")

    # --- launch hook -------------------------------------------------------------------
    asg.create_auto_scaling_group(AutoScalingGroupName="app", LaunchConfigurationName="lc", MinSize=0, MaxSize=5,
                                  DesiredCapacity=0, AvailabilityZones=["us-east-1a"])
    asg.put_lifecycle_hook(AutoScalingGroupName="app", LifecycleHookName="warmup",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING", HeartbeatTimeout=30,
                           NotificationTargetARN=qarn, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    receive()
    asg.set_desired_capacity(AutoScalingGroupName="app", DesiredCapacity=1)
    (msg,) = receive()
    new = msg["EC2InstanceId"]
    check(msg["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING" and msg["Origin"] == "EC2"
          and msg["Destination"] == "AutoScalingGroup", msg)
    check(instances("app") == {new: "Pending:Wait"}, instances("app"))
    imds_n = Imds(control, new)
    check(imds_n.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "InService"), "pending -> InService")
    asg.set_desired_capacity(AutoScalingGroupName="app", DesiredCapacity=1)  # Pending:Wait counts: no extra launch
    check(len(instances("app")) == 1, "no duplicate launch")
    asg.complete_lifecycle_action(AutoScalingGroupName="app", LifecycleHookName="warmup", InstanceId=new,
                                  LifecycleActionResult="CONTINUE")
    check(instances("app") == {new: "InService"}, "launch CONTINUE -> InService")
    asg.set_desired_capacity(AutoScalingGroupName="app", DesiredCapacity=2)
    (msg,) = receive()
    bad = msg["EC2InstanceId"]
    asg.complete_lifecycle_action(AutoScalingGroupName="app", LifecycleHookName="warmup", InstanceId=bad,
                                  LifecycleActionResult="ABANDON")
    (msg,) = receive()  # the replacement
    check(ec2_state(bad) == "terminated" and bad not in instances("app")
          and instances("app").get(msg["EC2InstanceId"]) == "Pending:Wait", "launch ABANDON -> replaced")
    asg.delete_lifecycle_hook(AutoScalingGroupName="app", LifecycleHookName="warmup")  # abandons the pending launch
    states = instances("app")
    check(len(states) == 2 and set(states.values()) == {"InService"}, f"after hook delete {states}")

    # --- Standby, Detached, never in a group -------------------------------------------
    asg.enter_standby(AutoScalingGroupName="app", InstanceIds=[new], ShouldDecrementDesiredCapacity=True)
    check(imds_n.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Standby"), "standby")
    asg.exit_standby(AutoScalingGroupName="app", InstanceIds=[new])
    asg.detach_instances(AutoScalingGroupName="app", InstanceIds=[new], ShouldDecrementDesiredCapacity=True)
    check(imds_n.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Detached"), "detached")
    lone = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    check(Imds(control, lone).get("/latest/meta-data/autoscaling/target-lifecycle-state")[0] == 404, "never in a group")

    # --- warm pool with instance reuse on scale-in --------------------------------------
    wurl = sqs.create_queue(QueueName="warm-lifecycle")["QueueUrl"]
    warn = sqs.get_queue_attributes(QueueUrl=wurl, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    asg.create_auto_scaling_group(AutoScalingGroupName="warm", LaunchConfigurationName="lc", MinSize=0, MaxSize=5,
                                  DesiredCapacity=2, AvailabilityZones=["us-east-1a"])
    asg.put_warm_pool(AutoScalingGroupName="warm", PoolState="Stopped", MinSize=0,
                      InstanceReusePolicy={"ReuseOnScaleIn": True})
    pool = asg.describe_warm_pool(AutoScalingGroupName="warm")
    check(pool["WarmPoolConfiguration"] == {"MinSize": 0, "PoolState": "Stopped", "InstanceReusePolicy": {"ReuseOnScaleIn": True}}
          and pool["Instances"] == [], f"warm pool, nothing pre-launched: {pool}")
    check(len(instances("warm")) == 2, "warm group has 2 instances")
    asg.put_lifecycle_hook(AutoScalingGroupName="warm", LifecycleHookName="drain",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=30,
                           NotificationTargetARN=warn, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    receive(wurl)  # test notification
    asg.set_desired_capacity(AutoScalingGroupName="warm", DesiredCapacity=1)
    (msg,) = receive(wurl)
    wv = msg["EC2InstanceId"]
    check(set(msg) == LIFECYCLE_KEYS and msg["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
          and msg["Origin"] == "AutoScalingGroup" and msg["Destination"] == "WarmPool"
          and msg["LifecycleHookName"] == "drain" and msg["AutoScalingGroupName"] == "warm", f"warm pool message {msg}")
    check(wv not in instances("warm") and list(instances("warm").values()) == ["InService"], f"victim left the group {instances('warm')}")

    def scaling_instance(iid: str) -> dict[str, Any]:
        (inst,) = asg.describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"]
        return inst

    def pool_instances(group: str) -> dict[str, str]:
        return {i["InstanceId"]: i["LifecycleState"] for i in asg.describe_warm_pool(AutoScalingGroupName=group)["Instances"]}

    inst = scaling_instance(wv)
    check(inst["LifecycleState"] == "Warmed:Pending:Wait" and inst["AutoScalingGroupName"] == "warm", inst)
    check(pool_instances("warm") == {wv: "Warmed:Pending:Wait"}, f"DescribeWarmPool {pool_instances('warm')}")
    check(ec2_state(wv) == "running", "running while its hook waits")
    imds_w = Imds(control, wv)
    check(imds_w.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Warmed:Stopped"), "target while Warmed:Pending:Wait")
    (act,) = [a for a in actions() if a["instance"] == wv]
    check(act["token"] == msg["LifecycleActionToken"] and act["state"] == "pending" and act["result"] is None
          and act["origin"] == "AutoScalingGroup" and act["destination"] == "WarmPool", f"warm action {act}")
    asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="warm", LifecycleHookName="drain", InstanceId=wv)
    asg.complete_lifecycle_action(AutoScalingGroupName="warm", LifecycleHookName="drain", InstanceId=wv,
                                  LifecycleActionResult="CONTINUE")
    inst = scaling_instance(wv)
    check(inst["LifecycleState"] == "Warmed:Stopped" and inst["AutoScalingGroupName"] == "warm", f"after complete {inst}")
    check(pool_instances("warm") == {wv: "Warmed:Stopped"}, "in the warm pool")
    check(ec2_state(wv) == "stopped", f"EC2 stopped, not terminated: {ec2_state(wv)}")
    check(imds_w.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "Warmed:Stopped"), "target Warmed:Stopped")
    (act,) = [a for a in actions() if a["instance"] == wv]
    check(act["state"] == "completed" and act["result"] == "CONTINUE" and act["heartbeats"] == 1, f"warm action done {act}")
    g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["warm"])["AutoScalingGroups"][0]
    check(g["DesiredCapacity"] == 1 and len(g["Instances"]) == 1 and g["WarmPoolSize"] == 1
          and g["WarmPoolConfiguration"]["PoolState"] == "Stopped", f"group with warm pool {g}")
    validation_error(asg.complete_lifecycle_action, f"No active Lifecycle Action found with instance ID {wv}",
                     AutoScalingGroupName="warm", LifecycleHookName="drain", InstanceId=wv, LifecycleActionResult="CONTINUE")

    # back into service: scale-out takes it from the warm pool; a launch hook sees Origin WarmPool
    asg.put_lifecycle_hook(AutoScalingGroupName="warm", LifecycleHookName="warmup",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING", HeartbeatTimeout=30,
                           NotificationTargetARN=warn, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    receive(wurl)
    asg.set_desired_capacity(AutoScalingGroupName="warm", DesiredCapacity=2)
    (msg,) = receive(wurl)
    check(msg["EC2InstanceId"] == wv and msg["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
          and msg["Origin"] == "WarmPool" and msg["Destination"] == "AutoScalingGroup", f"reused launch {msg}")
    check(instances("warm").get(wv) == "Pending:Wait" and len(instances("warm")) == 2 and pool_instances("warm") == {},
          f"from the warm pool {instances('warm')}")
    check(ec2_state(wv) == "running", "started again")
    check(imds_w.get("/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "InService"), "target InService again")
    asg.complete_lifecycle_action(AutoScalingGroupName="warm", LifecycleHookName="warmup", InstanceId=wv,
                                  LifecycleActionResult="CONTINUE")
    check(instances("warm").get(wv) == "InService", "reused instance InService")

    # a plain group (no warm pool) still terminates; so does one whose pool does not reuse
    asg.create_auto_scaling_group(AutoScalingGroupName="plain", LaunchConfigurationName="lc", MinSize=0, MaxSize=5,
                                  DesiredCapacity=3, AvailabilityZones=["us-east-1a"])
    check("WarmPoolConfiguration" not in asg.describe_warm_pool(AutoScalingGroupName="plain"), "no warm pool")
    asg.put_lifecycle_hook(AutoScalingGroupName="plain", LifecycleHookName="drain",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=30,
                           NotificationTargetARN=warn, RoleARN=f"arn:aws:iam::{ACCOUNT}:role/hook")
    receive(wurl)
    for desired in (2, 1):
        if desired == 1:
            asg.put_warm_pool(AutoScalingGroupName="plain", InstanceReusePolicy={"ReuseOnScaleIn": False})
        asg.set_desired_capacity(AutoScalingGroupName="plain", DesiredCapacity=desired)
        (msg,) = receive(wurl)
        pv = msg["EC2InstanceId"]
        check(msg["Destination"] == "EC2" and instances("plain").get(pv) == "Terminating:Wait", f"plain scale-in {msg}")
        check(imds_w.get("/latest/meta-data/instance-id")[0] == 200, "IMDS still up")
        asg.complete_lifecycle_action(AutoScalingGroupName="plain", LifecycleHookName="drain", InstanceId=pv,
                                      LifecycleActionResult="CONTINUE")
        check(pv not in instances("plain") and ec2_state(pv) == "terminated"
              and asg.describe_auto_scaling_instances(InstanceIds=[pv])["AutoScalingInstances"] == [], f"plain victim terminated ({desired})")
    check(pool_instances("plain") == {}, "nothing went to the non-reusing pool")

    asg.delete_auto_scaling_group(AutoScalingGroupName="web", ForceDelete=True)
    check(asg.describe_lifecycle_hooks(AutoScalingGroupName="web")["LifecycleHooks"] == [], "hooks deleted with group")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - report and fail
        import traceback

        traceback.print_exc()
        print(f"smoke test FAILED after {CHECKS} checks: {exc}", file=sys.stderr)
        sys.exit(1)
