#!/usr/bin/env python3
"""lastcall demo on the local AWS emulator: the scenario operators want, end to end.

Creates an Auto Scaling group of three instances with a terminating lifecycle hook that sends to
an SQS queue, and for each instance: a fake instance metadata service, a fluentd (the test double:
supervisor, worker, file buffer), a host in a real Zabbix API and a host in Mackerel (the test
double), and a `lastcall run` daemon. Then it scales the group in by one and prints the timeline
of what the chosen instance's lastcall did: fluentd flushed and confirmed, the agents stopped
(systemctl is a recording stand-in: no systemd runs here), the host deleted in Zabbix and
retired in Mackerel, CONTINUE, the instance terminated.

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


SYSTEMCTL = """#!/bin/sh
# A stand-in for systemctl (no systemd runs here): records the call; units stop at once.
echo "$*" >> "$(dirname "$0")/systemctl.calls"
case "$1" in is-active) echo inactive; exit 3;; esac
exit 0
"""


def config(queue_url: str, workdir: Path, zabbix_url: str, mackerel_url: str) -> str:
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
kind = "fluentd"
name = "flush-fluentd"
pid_file = "{workdir}/fluentd.pid"
buffer_path = "{workdir}/buffer"
timeout = "30s"

[[step]]
kind = "systemd"
name = "stop-zabbix-agent"
unit = "zabbix-agent.service"
systemctl = "{workdir}/systemctl"

[[step]]
kind = "systemd"
name = "stop-mackerel-agent"
unit = "mackerel-agent.service"
systemctl = "{workdir}/systemctl"

[[step]]
kind = "zabbix"
name = "zabbix-delete"
url = "{zabbix_url}"
token_file = "{workdir}/zabbix.token"
host = "{{instance_id}}"

[[step]]
kind = "mackerel"
name = "mackerel-retire"
api_base = "{mackerel_url}"
api_key_file = "{workdir}/mackerel.key"
host_id_file = "{workdir}/mackerel-agent-id"

[[step]]
kind = "sleep"
name = "drain"
duration = "1s"
"""


def zabbix_rpc(z: dict, token: str, method: str, params) -> object:
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    headers = {"Content-Type": "application/json-rpc"}
    if tuple(int(x) for x in z["version"].split(".")[:2]) >= (6, 4):
        headers["Authorization"] = f"Bearer {token}"
    else:
        body["auth"] = token
    req = urllib.request.Request(z["url"], data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        v = json.loads(r.read())
    if "error" in v:
        raise SystemExit(f"demo: Zabbix {method}: {v['error']}")
    return v["result"]


def secret(path: Path, value: str) -> None:
    path.write_text(value)
    path.chmod(0o600)


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
    mackerel = subprocess.Popen(
        ["python3", str(ROOT / "tests/doubles/fake_mackerel.py"), "--port", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    procs.append(mackerel)
    fluentd_pids: list[Path] = []
    try:
        say("starting a real Zabbix API (the first time installs Zabbix and PostgreSQL from Debian: about 70 s)")
        z = json.loads(subprocess.run([str(ROOT / "tests/services/zabbix.sh"), "start"], check=True,
                                      stdout=subprocess.PIPE).stdout)
        ztoken = Path(z["token_file"]).read_text().strip()
        zgroup = zabbix_rpc(z, ztoken, "hostgroup.create", {"name": f"demo-{os.getpid()}"})["groupids"][0]
        m = json.loads(mackerel.stdout.readline())
        mkey = "demo-mackerel-key"
        post_json(f"{m['control']}/keys", {"key": mkey, "write": True})
        say(f"Zabbix {z['version']} at {z['url']}; Mackerel (test double) at {m['url']}")
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
            # This instance's fluentd, agents, and monitoring hosts.
            subprocess.run([str(ROOT / "tests/doubles/fluentd"), "-d", str(d / "fluentd.pid"), "--buffer-path", str(d / "buffer"),
                            "-o", str(d / "fluentd.log"), "--chunks", "3", "--chunk-seconds", "0.2",
                            "--exit-with", str(os.getpid())], check=True)
            fluentd_pids.append(d / "fluentd.pid")
            (d / "systemctl").write_text(SYSTEMCTL)
            (d / "systemctl").chmod(0o755)
            zabbix_rpc(z, ztoken, "host.create", {"host": iid, "groups": [{"groupid": zgroup}],
                                                   "interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "", "port": "10050"}]})
            mid = post_json(f"{m['control']}/hosts", {"name": iid, "customIdentifier": f"{iid}.ec2.amazonaws.com"})["id"]
            (d / "mackerel-agent-id").write_text(mid)
            secret(d / "zabbix.token", ztoken)
            secret(d / "mackerel.key", mkey)
            (d / "lastcall.toml").write_text(config(queue_url, d, z["url"], m["url"]))
            (d / "lastcall.toml").chmod(0o600)
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
            wait(f"fluentd for {iid} to run", lambda: "fluentd worker is now running" in (work / iid / "fluentd.log").read_text())
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
            if t < 0:
                continue
            fields = {k: v for k, v in ev.items() if k not in ("timestamp", "level", "message", "target")}
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if k in ("step", "outcome", "elapsed_ms", "result", "shape", "message_id", "stream"))
            say(f"  +{t:7.3f}s  {ev['message']}" + (f"  [{extra}]" if extra else ""))
        say(f"  +{t_end - t0:7.3f}s  {gone} left the group; EC2 state: {state}")
        others = [i for i in instances if i != gone]
        for i in others:
            text = logs[i].read_text()
            released = text.count("message for another instance")
            aside = ", then stepped out of the queue's way (it is staying)" if "stepping out of the queue's way" in text else ""
            say(f"  (lastcall on {i}: released the message to its owner {released} time(s){aside}, ran nothing)")
        chunks = list((work / gone / "buffer").rglob("buffer.*.log"))
        zhosts = zabbix_rpc(z, ztoken, "host.get", {"output": ["host"], "filter": {"host": instances}})
        mhosts = json.loads(urllib.request.urlopen(f"{m['control']}/hosts").read())
        retired = [h["name"] for h in mhosts if h.get("isRetired")]
        calls = (work / gone / "systemctl.calls").read_text().split("\n")
        say(f"  fluentd buffer chunks left on {gone}: {len(chunks)}")
        say(f"  systemctl calls on {gone}: {[c for c in calls if c.startswith('stop')]}")
        say(f"  Zabbix hosts left: {sorted(h['host'] for h in zhosts)}")
        say(f"  Mackerel hosts retired: {retired}")
        ok = (state == "terminated" and not chunks and gone not in [h["host"] for h in zhosts]
              and retired == [gone] and len(zhosts) == 2)
        say(f"\n{'OK' if ok else 'FAILED'}: {gone} ran its steps and was terminated {t_end - t0:.2f}s after the scale-in"
            + (f"; logs in {work}" if keep else ""))
        return 0 if ok else 1
    finally:
        for pf in fluentd_pids:
            try:
                os.kill(int(pf.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        subprocess.run([str(ROOT / "tests/services/zabbix.sh"), "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
