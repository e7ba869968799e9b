"""Shared pieces of the benchmarks: the emulator, groups and queues, lastcall and baseline
processes, the call counter, and statistics.

Every benchmark starts its own emulator (tests/emulator/emulator.py), so runs never see each
other's groups, queues or counts. Times of completion are the emulator's own record of the
CompleteLifecycleAction (GET {control}/actions, `finished_at`, millisecond resolution); calls
are counted by the emulator (GET {control}/calls) per client (User-Agent) and per access key id,
and every simulated instance gets its own access key id, so calls can be told apart by instance.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import boto3
from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
AMI = "ami-12c6146b"
ROLE = "arn:aws:iam::123456789012:role/lifecycle"
BASELINE = BENCH / "baseline" / "asg-drain.sh"
AWSCLI_VENV = BENCH / ".venv-awscli"
# lastcall's SQS source logs these per foreign message (first time at info, again at debug).
FOREIGN_FIRST = "message for another instance; releasing it to its owner"
FOREIGN_AGAIN = "another instance's message again; releasing it"
STEPPED_ASIDE = "others' lifecycle messages are in the queue and this instance is staying"
# The SQS source's module, at debug so that repeated foreign receptions are logged too.
LASTCALL_LOG_FILTER = os.environ.get("LASTCALL_LOG_FILTER", "lastcall::source::sqs=debug,info")


# --- statistics ---------------------------------------------------------------------------
def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, Any]:
    """n, median, p95, min, max and mean of a sample (empty sample: n = 0 and no values)."""
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p95": percentile(xs, 0.95),
        "min": min(xs),
        "max": max(xs),
        "mean": statistics.fmean(xs),
    }


def parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# --- HTTP ---------------------------------------------------------------------------------
def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict | None = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 30.0, step: float = 0.01) -> Any:
    start = time.monotonic()
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"bench: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


# --- the emulator -------------------------------------------------------------------------
class Emulator:
    """tests/emulator/emulator.py in a child process (it exits when our pipe to it closes)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH.parent / "tests" / "emulator" / "emulator.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = json.loads(self.proc.stdout.readline())
        self.endpoint: str = ready["endpoint"]
        self.control: str = ready["control"]
        s = boto3.Session(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1")
        cfg = BotoConfig(max_pool_connections=200, retries={"max_attempts": 2})
        self.session = s
        self.sqs = s.client("sqs", endpoint_url=self.endpoint, config=cfg)
        self.asg = s.client("autoscaling", endpoint_url=self.endpoint, config=cfg)

    def client(self, service: str) -> Any:
        """A new client of its own (boto3 clients are not shared between threads here)."""
        return self.session.client(service, endpoint_url=self.endpoint, config=BotoConfig(retries={"max_attempts": 2}))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # control API
    def actions(self) -> list[dict]:
        return get_json(f"{self.control}/actions")

    def calls(self) -> dict:
        return get_json(f"{self.control}/calls")

    def reset_calls(self) -> None:
        post_json(f"{self.control}/calls/reset")

    def realism(self, body: dict) -> dict:
        """POST /realism: one scope's knobs ({"group": …}, {"queue": …}) or the global ones
        (tests/emulator/README.md, "Realism knobs")."""
        return post_json(f"{self.control}/realism", body)

    def imds(self, instance_id: str) -> str:
        return post_json(f"{self.control}/imds", {"instance_id": instance_id})["endpoint"]

    def completed(self, instance_ids: set[str] | None = None) -> dict[str, float]:
        """instance id -> unix time of its completed terminating action."""
        out = {}
        for a in self.actions():
            if a["state"] == "completed" and (instance_ids is None or a["instance"] in instance_ids):
                out[a["instance"]] = parse_iso(a["finished_at"])
        return out

    # resources
    def queue(self, name: str, visibility_timeout: int = 30) -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)})["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    def queue_depth(self, url: str) -> int:
        a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    def group(self, name: str, size: int, target_arn: str | None = None, heartbeat: int = 300) -> list[str]:
        """A group of `size` instances with one terminating hook `drain` (to `target_arn`, or
        without a notification target); returns the instance ids."""
        self.asg.create_launch_configuration(LaunchConfigurationName=name, ImageId=AMI, InstanceType="t3.micro")
        self.asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=0, MaxSize=max(size * 2, 1),
                                           DesiredCapacity=size, AvailabilityZones=["us-east-1a"])
        hook: dict[str, Any] = dict(AutoScalingGroupName=name, LifecycleHookName="drain", LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                                    HeartbeatTimeout=heartbeat)
        if target_arn:
            hook.update(NotificationTargetARN=target_arn, RoleARN=ROLE)
        self.asg.put_lifecycle_hook(**hook)
        return self.instances(name)

    def instances(self, group: str) -> list[str]:
        g = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        return [i["InstanceId"] for i in g["Instances"] if i["LifecycleState"] == "InService"]

    def terminate(self, instance_id: str) -> None:
        self.asg.terminate_instance_in_auto_scaling_group(InstanceId=instance_id, ShouldDecrementDesiredCapacity=True)


def count(calls: dict, client: str | None = None, service: str | None = None, action: str | None = None, key_prefix: str | None = None) -> int:
    """Sums a GET /calls answer, filtered by client (User-Agent word), service, action, key prefix."""
    total = 0
    if key_prefix is not None:
        tables = [t for k, t in calls["keys"].items() if k.startswith(key_prefix)]
    elif client is not None:
        tables = [calls["clients"].get(client, {})]
    else:
        tables = [calls["calls"]]
    for t in tables:
        for svc, actions in t.items():
            if service is not None and svc != service:
                continue
            for act, n in actions.items():
                if action is None or act == action:
                    total += n
    return total


def by_action(calls: dict, key_prefix: str, service: str | None = None) -> dict[str, int]:
    """service:action -> count over every access key starting with key_prefix."""
    out: dict[str, int] = {}
    for k, t in calls["keys"].items():
        if not k.startswith(key_prefix):
            continue
        for svc, actions in t.items():
            if service is not None and svc != service:
                continue
            for act, n in actions.items():
                out[f"{svc}:{act}"] = out.get(f"{svc}:{act}", 0) + n
    return dict(sorted(out.items()))


def imds_requests(calls: dict) -> int:
    return sum(calls["imds"].values())


# --- processes ----------------------------------------------------------------------------
def aws_env(work: Path, endpoint: str, imds: str, key: str) -> dict[str, str]:
    """A clean environment for one simulated instance: its own IMDS, its own access key id, no
    AWS config files from the machine."""
    (work / "aws-config").write_text("")
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(work),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_CONFIG_FILE": str(work / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-config"),
    }


def lastcall_config(work: Path, *, queue_url: str | None = None, imds_interval: str | None = None) -> Path:
    text = ""
    if queue_url:
        text += f'[sqs]\nqueue_url = "{queue_url}"\n'
    if imds_interval:
        text += f'[imds]\nlifecycle = true\npoll_interval = "{imds_interval}"\n'
    text += f'[lifecycle]\nstate_dir = "{work}/state"\n'
    path = work / "lastcall.toml"
    path.write_text(text)
    return path


class Lastcall:
    """One `lastcall run` (or `once`) for one simulated instance, logging JSON to a file."""

    def __init__(self, binary: str, work: Path, env: dict[str, str], config: Path, args: list[str] | None = None) -> None:
        self.work = work
        self.log = work / "lastcall.log"
        env = dict(env, LASTCALL_LOG=LASTCALL_LOG_FILTER)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([binary, "--config", str(config), "--log-format", "json", *(args or ["run"])], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def foreign_receptions(logs: list[list[dict]], message_ids: set[str] | None = None) -> int:
    """Messages received by an instance they were not for, from lastcall's JSON logs."""
    n = 0
    for lines in logs:
        for l in lines:
            if l.get("message") in (FOREIGN_FIRST, FOREIGN_AGAIN) and (message_ids is None or l.get("message_id") in message_ids):
                n += 1
    return n


def awscli() -> Path:
    return AWSCLI_VENV / "bin" / "aws"


class Baseline:
    """The operators' script in a tight loop (`while true; do asg-drain.sh; done`), or one pass."""

    def __init__(self, work: Path, env: dict[str, str], queue_url: str, wait: int = 20, loop: bool = True) -> None:
        self.work = work
        self.log = work / "baseline.log"
        env = dict(env, QUEUE_URL=queue_url, WAIT_SECONDS=str(wait), PATH=f"{AWSCLI_VENV / 'bin'}:/usr/bin:/bin", AWS_DEFAULT_REGION="us-east-1")
        cmd = f"while true; do {BASELINE}; done" if loop else str(BASELINE)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(["bash", "-c", cmd], env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


# --- /proc --------------------------------------------------------------------------------
def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- results ------------------------------------------------------------------------------
def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"lastcall-{prefix}-"))


def cleanup(path: Path) -> None:
    if os.environ.get("BENCH_KEEP"):  # keep the logs for a look afterwards
        print(f"bench: kept {path}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = dict(data, benchmark=name, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), loadavg_end=os.getloadavg())
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def rng(seed: str) -> random.Random:
    return random.Random(seed)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def host() -> str:
    return platform.node()
