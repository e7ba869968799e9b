#!/usr/bin/env python3
"""Idle footprint of `lastcall run` with the queue source: RSS (from /proc) and CPU time.

Starts the emulator, one group of one instance with a hook to a queue, and a lastcall daemon for
that instance; after its start-up, samples /proc/PID/status and /proc/PID/stat once a second.

Usage: idle_footprint.py PATH_TO_LASTCALL [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lastcall-idle-"))
    emu = subprocess.Popen([sys.executable, str(ROOT / "tests/emulator/emulator.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready = json.loads(emu.stdout.readline())
        endpoint, control = ready["endpoint"], ready["control"]
        s = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
        sqs, asg = s.client("sqs", endpoint_url=endpoint), s.client("autoscaling", endpoint_url=endpoint)
        url = sqs.create_queue(QueueName="idle")["QueueUrl"]
        asg.create_launch_configuration(LaunchConfigurationName="idle", ImageId="ami-12c6146b", InstanceType="t3.micro")
        asg.create_auto_scaling_group(AutoScalingGroupName="idle", LaunchConfigurationName="idle", MinSize=0, MaxSize=1, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
        iid = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["idle"])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
        req = urllib.request.Request(f"{control}/imds", data=json.dumps({"instance_id": iid}).encode(), method="POST")
        imds = json.loads(urllib.request.urlopen(req).read())["endpoint"]
        (work / "lastcall.toml").write_text(f'[sqs]\nqueue_url = "{url}"\n[lifecycle]\nstate_dir = "{work}/state"\n')
        (work / "aws").write_text("")
        env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
               "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_CONFIG_FILE": str(work / "aws"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws")}
        p = subprocess.Popen([args.lastcall, "--config", str(work / "lastcall.toml"), "run"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        cpu0 = cpu_seconds(p.pid)
        rss = []
        for _ in range(args.seconds):
            rss.append(proc_kib(p.pid, "VmRSS"))
            time.sleep(1)
        cpu = cpu_seconds(p.pid) - cpu0
        hwm = proc_kib(p.pid, "VmHWM")
        p.terminate()
        p.wait(timeout=10)
        print(f"idle lastcall run (queue source), {args.seconds} s: RSS max {max(rss) / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB, "
              f"peak (VmHWM) {hwm / 1024:.1f} MiB, CPU {cpu:.2f} s")
        return 0
    finally:
        emu.terminate()
        emu.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
