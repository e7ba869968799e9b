#!/usr/bin/env python3
"""Scale-in to CompleteLifecycleAction latency of `lastcall run` with the queue, no steps.

For each run: a fresh group of one instance with a terminating hook to a fresh queue, a lastcall
daemon for that instance (its test notification already handled, so it sits in a long poll), then
TerminateInstanceInAutoScalingGroup. The latency is from just before that call to the moment the
emulator recorded the CompleteLifecycleAction (its own clock, millisecond resolution).

Usage: scale_in_latency.py PATH_TO_LASTCALL [--runs 20]
Prints one line per run and a summary; exits non-zero if a run fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
AMI = "ami-12c6146b"


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait(what: str, pred, timeout: float = 30.0):
    start = time.monotonic()
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() - start > timeout:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.01)


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    lastcall = str(Path(args.lastcall).resolve())
    work = Path(tempfile.mkdtemp(prefix="lastcall-bench-"))
    emu = subprocess.Popen([sys.executable, str(ROOT / "tests/emulator/emulator.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready = json.loads(emu.stdout.readline())
        endpoint, control = ready["endpoint"], ready["control"]
        s = boto3.Session(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1")
        sqs, asg = s.client("sqs", endpoint_url=endpoint), s.client("autoscaling", endpoint_url=endpoint)
        latencies = []
        for run in range(args.runs):
            name = f"bench-{run}"
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            asg.create_launch_configuration(LaunchConfigurationName=name, ImageId=AMI, InstanceType="t3.micro")
            asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=0, MaxSize=1, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
            asg.put_lifecycle_hook(AutoScalingGroupName=name, LifecycleHookName="drain", LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                                   NotificationTargetARN=arn, RoleARN="arn:aws:iam::123456789012:role/x", HeartbeatTimeout=300)
            iid = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
            imds = post_json(f"{control}/imds", {"instance_id": iid})["endpoint"]
            d = work / name
            d.mkdir()
            (d / "lastcall.toml").write_text(f'[sqs]\nqueue_url = "{url}"\n[lifecycle]\nstate_dir = "{d}/state"\n')
            (d / "aws").write_text("")
            env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
                   "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_CONFIG_FILE": str(d / "aws"), "AWS_SHARED_CREDENTIALS_FILE": str(d / "aws")}
            log = d / "log"
            with open(log, "w") as f:
                p = subprocess.Popen([lastcall, "--config", str(d / "lastcall.toml"), "run"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
            try:
                wait("the test notification to be handled", lambda: "TEST_NOTIFICATION" in log.read_text())
                time.sleep(0.2)  # the daemon is back in its long poll
                t0 = time.time()
                asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)
                done = wait("completion", lambda: [a for a in get_json(f"{control}/actions") if a["instance"] == iid and a["state"] == "completed"])
                t1 = datetime.fromisoformat(done[0]["finished_at"].replace("Z", "+00:00")).timestamp()
                latencies.append(t1 - t0)
                print(f"run {run + 1:2d}: {1000 * (t1 - t0):7.1f} ms", flush=True)
            finally:
                p.terminate()
                p.wait(timeout=10)
        print(f"scale-in -> CompleteLifecycleAction, {len(latencies)} runs: "
              f"median {1000 * statistics.median(latencies):.0f} ms, p95 {1000 * percentile(latencies, 0.95):.0f} ms, "
              f"min {1000 * min(latencies):.0f} ms, max {1000 * max(latencies):.0f} ms")
        return 0
    finally:
        emu.terminate()
        emu.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
