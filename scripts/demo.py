#!/usr/bin/env python3
"""lastcall demo on the local AWS emulator.

Creates an Auto Scaling group of three instances with a terminating lifecycle hook that sends to
an SQS queue, starts a `lastcall run` daemon for each instance (each with its own fake instance
metadata service and its own local "agent" process to stop), scales the group in by one, and
prints the timeline of what happened on the instance that was chosen to go.

Usage: demo.py PATH_TO_LASTCALL [--keep]   (--keep leaves the work directory for inspection)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
AMI = "ami-12c6146b"  # an AMI moto ships
GROUP = "demo-web"
HOOK = "drain"
TIMEOUT = 60.0


def say(msg: str) -> None:
    print(msg, flush=True)


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait(what: str, predicate, timeout: float = TIMEOUT):
    start = time.monotonic()
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() - start > timeout:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def config(queue_url: str, workdir: Path) -> str:
    return f"""# lastcall config written by the demo
[sqs]
queue_url = "{queue_url}"
visibility_timeout = "30s"

[lifecycle]
hook_name = "{HOOK}"
state_dir = "{workdir}/state"

[[step]]
kind = "command"
name = "announce"
command = ["/bin/sh", "-c", "echo \\"$LASTCALL_INSTANCE_ID leaves $LASTCALL_ASG_NAME ($0, hook $LASTCALL_HOOK_NAME)\\"", "{{local_ipv4}}"]

[[step]]
kind = "signal"
name = "stop-agent"
pid_file = "{workdir}/agent.pid"
signal = "SIGTERM"
wait_exit = true
timeout = "10s"

[[step]]
kind = "command"
name = "farewell-file"
command = ["/usr/bin/touch", "{workdir}/farewell-{{instance_id}}"]

[[step]]
kind = "sleep"
name = "drain"
duration = "1s"
"""


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    lastcall = str(Path(sys.argv[1]).resolve())
    keep = "--keep" in sys.argv[2:]
    work = Path(tempfile.mkdtemp(prefix="lastcall-demo-"))
    procs: list[subprocess.Popen] = []

    emu = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/emulator/emulator.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    procs.append(emu)
    try:
        ready = json.loads(emu.stdout.readline())
        endpoint, control = ready["endpoint"], ready["control"]
        say(f"AWS emulator (moto + lifecycle hooks) at {endpoint}")

        session = boto3.Session(aws_access_key_id="demo", aws_secret_access_key="demo", region_name="us-east-1")
        sqs = session.client("sqs", endpoint_url=endpoint)
        asg = session.client("autoscaling", endpoint_url=endpoint)
        ec2 = session.client("ec2", endpoint_url=endpoint)

        queue_url = sqs.create_queue(QueueName="demo-lifecycle")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        asg.create_launch_configuration(LaunchConfigurationName=GROUP, ImageId=AMI, InstanceType="t3.micro")
        asg.create_auto_scaling_group(
            AutoScalingGroupName=GROUP, LaunchConfigurationName=GROUP,
            MinSize=0, MaxSize=3, DesiredCapacity=3, AvailabilityZones=["us-east-1a"],
        )
        asg.put_lifecycle_hook(
            AutoScalingGroupName=GROUP, LifecycleHookName=HOOK,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            NotificationTargetARN=queue_arn, RoleARN="arn:aws:iam::123456789012:role/asg-notify",
            HeartbeatTimeout=60, DefaultResult="ABANDON",
        )
        instances = [i["InstanceId"] for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]["Instances"]]
        say(f"group {GROUP}: {', '.join(instances)}; hook {HOOK!r} -> {queue_url}")

        logs: dict[str, Path] = {}
        for iid in instances:
            d = work / iid
            d.mkdir()
            imds = post_json(f"{control}/imds", {"instance_id": iid})["endpoint"]
            agent = subprocess.Popen(["/bin/sleep", "600"])
            procs.append(agent)
            (d / "agent.pid").write_text(f"{agent.pid}\n")
            (d / "lastcall.toml").write_text(config(queue_url, d))
            (d / "aws-config").write_text("")
            logs[iid] = d / "lastcall.log"
            env = {
                "PATH": "/usr/bin:/bin",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
                "AWS_ACCESS_KEY_ID": "demo",
                "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_CONFIG_FILE": str(d / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(d / "aws-config"),
            }
            with open(logs[iid], "w") as log:
                procs.append(subprocess.Popen(
                    [lastcall, "--config", str(d / "lastcall.toml"), "--log-format", "json", "run"],
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                ))
        for iid in instances:
            wait(f"lastcall on {iid} to start", lambda: "polling the lifecycle queue" in logs[iid].read_text())
        say("lastcall is running on each instance (one daemon per instance, each with its own instance metadata)\n")

        t0 = time.time()
        asg.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=2)

        def victim():
            for i in asg.describe_auto_scaling_instances(InstanceIds=instances)["AutoScalingInstances"]:
                if i["LifecycleState"] == "Terminating:Wait":
                    return i["InstanceId"]
            return None

        gone = wait("an instance in Terminating:Wait", victim)
        wait(f"{gone} to be terminated", lambda: not asg.describe_auto_scaling_instances(InstanceIds=[gone])["AutoScalingInstances"])
        t_end = time.time()
        time.sleep(0.3)
        state = ec2.describe_instances(InstanceIds=[gone])["Reservations"][0]["Instances"][0]["State"]["Name"]

        say(f"Timeline of the scale-in (lastcall on {gone}, the instance Auto Scaling chose):")
        say(f"  +{0:7.3f}s  SetDesiredCapacity {GROUP} 3 -> 2")
        skip = {"lastcall ready", "polling the lifecycle queue"}
        for line in logs[gone].read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("level") not in ("INFO", "WARN", "ERROR") or ev.get("message") in skip:
                continue
            t = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp() - t0
            if t < -1:
                continue
            fields = {k: v for k, v in ev.items() if k not in ("timestamp", "level", "message", "target")}
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if k in ("step", "outcome", "elapsed_ms", "result", "shape", "message_id", "stream"))
            say(f"  +{t:7.3f}s  {ev['message']}" + (f"  [{extra}]" if extra else ""))
        say(f"  +{t_end - t0:7.3f}s  {gone} left the group; EC2 state: {state}")
        others = [i for i in instances if i != gone]
        for i in others:
            released = logs[i].read_text().count("message for another instance")
            say(f"  (lastcall on {i}: released the message to its owner {released} time(s), ran nothing)")
        farewell = work / gone / f"farewell-{gone}"
        ok = farewell.exists() and state == "terminated"
        say(f"\n{'OK' if ok else 'FAILED'}: {gone} ran its steps and was terminated {t_end - t0:.2f}s after the scale-in"
            + (f"; logs in {work}" if keep else ""))
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
