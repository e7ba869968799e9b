#!/usr/bin/env python3
"""AWS emulator for lastcall's integration tests.

One process runs:

* moto's server (every service moto has) with EC2 Auto Scaling lifecycle hooks
  made to *work*: moto 5.2.5 only stores hooks as metadata, terminates scale-in
  victims at once, sends no notifications and has no CompleteLifecycleAction /
  RecordLifecycleActionHeartbeat.  The patches below add lifecycle actions with
  tokens, Terminating:Wait / Pending:Wait, SQS/SNS notifications, heartbeat and
  default-result timeouts and AWS-worded errors.  Warm pools (moto keeps only
  their configuration) get instances: scale-in with ReuseOnScaleIn returns the
  victim to the pool (Warmed:Pending:Wait, then Warmed:Stopped|Running|
  Hibernated) and scale-out takes instances from it.
* a control HTTP server (health, lifecycle-action listing, and a fake IMDSv2
  server per simulated instance, with per-server overrides).
* a request counter for benchmarks: every AWS API call (by service and
  action, also per client and per access key id) and every IMDS request,
  read with GET /calls and zeroed with POST /calls/reset on the control
  server (see CallCounter).
* realism knobs (POST /realism on the control server, all off by default):
  per group notification_delay, describe_lag, imds_target_lag and
  no_action_window; per queue receive_max, receive_sample, receive_order and
  latency; global seed and autoscaling_throttle.  Transient faults are not a
  knob: they come from tests/faults/proxy.py in front of the emulator.

When both listen, exactly one JSON line is written to stdout:
    {"endpoint":"http://127.0.0.1:PORT","control":"http://127.0.0.1:PORT"}
Logs go to stderr.  The process exits when stdin reaches EOF (so a test
harness that dies never leaves it behind) and on SIGTERM/SIGINT.

See README.md next to this file for the control API.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Collection

from werkzeug.serving import make_server

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import (
    AutoScalingBackend,
    FakeAutoScalingGroup,
    InstanceState,
    LifecycleHook,
    TerminateInstanceActivity,
    autoscaling_backends,
)
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.base_backend import BackendDict
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2 import ec2_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sns import sns_backends
from moto.sqs import sqs_backends

log = logging.getLogger("emulator")

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
RESULTS = ("CONTINUE", "ABANDON")

# Lifecycle states that count towards the group's capacity (AWS counts pending
# instances; Terminating* and Standby do not count).
CAPACITY_STATES = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")


def iso_now() -> str:
    """AWS notification timestamp: ISO 8601, milliseconds, Z."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------
# Shared state.  moto's server is threaded and moto itself is not thread-safe,
# so every Auto Scaling request, the timeout thread and the IMDS look-ups take
# LOCK.  COND (same lock) wakes the timeout thread when deadlines change.
# ---------------------------------------------------------------------------
LOCK = threading.RLock()
COND = threading.Condition(LOCK)


@dataclass
class LifecycleAction:
    token: str
    backend: AutoScalingBackend = field(repr=False)
    group_name: str
    hook_name: str
    instance_id: str
    transition: str
    default_result: str
    heartbeat_timeout: int
    deadline: float  # time.monotonic() at which DefaultResult applies
    global_deadline: float  # hard cap: start + GlobalTimeout
    origin: str = ""  # EC2 | AutoScalingGroup | WarmPool (as in the message)
    destination: str = ""
    started_at: str = field(default_factory=iso_now)
    began: float = field(default_factory=time.monotonic)  # start, for no_action_window
    state: str = "pending"  # pending | completed | timed-out | cancelled
    result: str | None = None
    finished_at: str | None = None
    heartbeats: int = 0

    def to_json(self) -> dict[str, Any]:
        remaining = None
        if self.state == "pending":
            remaining = round(max(0.0, self.deadline - time.monotonic()), 3)
        return {
            "group": self.group_name,
            "hook": self.hook_name,
            "instance": self.instance_id,
            "token": self.token,
            "transition": self.transition,
            "origin": self.origin,
            "destination": self.destination,
            "state": self.state,
            "result": self.result,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "heartbeats": self.heartbeats,
            "seconds_to_timeout": remaining,
        }


# token -> action; finished actions are kept for GET /actions.
ACTIONS: dict[str, LifecycleAction] = {}
# instance id -> "Terminated" | "Detached" | "Warmed:Terminated" for instances
# that left a group (or its warm pool);
# the IMDS target-lifecycle-state needs it once the group forgot them.
DEPARTED: dict[str, str] = {}


# Realism knobs, all off by default.  See README.md, "Realism knobs".
# Per group (so that tests sharing one emulator do not see each other's):
#   notification_delay: seconds between the start of an action (its timer runs
#     from there) and its notification;
#   describe_lag: seconds after an action starts during which
#     DescribeAutoScalingInstances still shows the instance's previous state;
#   imds_target_lag: seconds after a transition starts during which IMDS
#     autoscaling/target-lifecycle-state still gives the previous target state;
#   no_action_window: seconds after an action starts during which Complete /
#     Heartbeat answer "No active Lifecycle Action found ..." although it exists.
REALISM: dict[str, dict[str, float]] = {}
REALISM_KNOBS = ("notification_delay", "describe_lag", "imds_target_lag", "no_action_window")
# Per instance (by id): imds_target_lag (overrides the group's).
INSTANCE_REALISM: dict[str, dict[str, float]] = {}
INSTANCE_KNOBS = ("imds_target_lag",)
# Per queue (by name):
#   receive_max: a receive returns at most this many messages, however many are visible and
#     however many were asked for (a standard queue samples a subset of its servers);
#   receive_sample: probability that a visible message is included in one receive pass;
#   receive_order: shuffle (default) | oldest_first | oldest_first_jitter;
#   latency: extra seconds added to every SQS call on that queue (half before, half after);
#   sent_age: messages sent to the queue from now on carry a SentTimestamp this many seconds
#     in the past (as if they had been circulating for that long).
QUEUE_REALISM: dict[str, dict[str, Any]] = {}
QUEUE_KNOBS = ("receive_max", "receive_sample", "receive_order", "latency", "sent_age", "date_behind")
RECEIVE_ORDERS = ("shuffle", "oldest_first", "oldest_first_jitter")
# oldest_first_jitter: a message at rank i sorts by i + uniform(0, ORDER_JITTER), so it can
# come before at most the ORDER_JITTER - 1 messages sent just before it.
ORDER_JITTER = 3.0
# A long poll whose pass sampled nothing while messages are visible tries again after this.
SAMPLE_RETRY = 0.05
# Global: seed (of every random choice) and autoscaling_throttle (a Throttle, below).
GLOBAL_KNOBS = ("seed", "autoscaling_throttle")
THROTTLE_KEYS = ("rate", "burst", "keys", "shared")
# instance id -> (time.monotonic() until which the lag lasts, the target state IMDS shows
# meanwhile, or None for 404)
IMDS_LAG: dict[str, tuple[float, str | None]] = {}

# Random choices (receive sampling and order) come from one stream per use (e.g. one per
# queue), so that a seeded run does not depend on what other queues do.  Seeded with
# "SEED:STREAM" (deterministic, unlike hash()), or from the OS without a seed.
SEED: int | None = None
_RNGS: dict[str, random.Random] = {}
_RNG_LOCK = threading.Lock()


def rng(stream: str) -> random.Random:
    with _RNG_LOCK:
        r = _RNGS.get(stream)
        if r is None:
            r = _RNGS[stream] = random.Random(f"{SEED}:{stream}" if SEED is not None else None)
        return r


def set_seed(seed: int | None) -> None:
    global SEED
    with _RNG_LOCK:
        SEED = seed
        _RNGS.clear()


class Throttle:
    """Auto Scaling's request rate limit: a token bucket per access key id (the emulator cannot
    see accounts), or one bucket shared by all throttled keys (shared=True, a fleet in one
    account).  keys: only these access key ids are throttled (None: all).  The bucket starts
    full (burst tokens) and refills at rate tokens/s; a refused call takes no token."""

    def __init__(self, rate: float, burst: float, keys: list[str] | None, shared: bool) -> None:
        self.rate, self.burst, self.keys, self.shared = rate, burst, keys, shared
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, at)

    def allow(self, key: str) -> bool:
        if self.keys is not None and key not in self.keys:
            return True
        bucket = "*" if self.shared else key
        with self.lock:
            now = time.monotonic()
            tokens, at = self.buckets.get(bucket, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            ok = tokens >= 1
            self.buckets[bucket] = (tokens - 1 if ok else tokens, now)
            return ok

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "burst": self.burst, "keys": self.keys, "shared": self.shared}


THROTTLE: Throttle | None = None


def knob(group_name: str, name: str) -> float:
    return float(REALISM.get(group_name, {}).get(name, 0) or 0)


def keep_ecs_tasks_running() -> None:
    """moto advances an ECS task one state per DescribeTasks by default (RUNNING, DEACTIVATING,
    STOPPING, DEPROVISIONING, STOPPED): a task stops because it was looked at.  On AWS a task runs
    until it is stopped (StopTask, its service's scheduler, or its own end).  A test stops it with
    StopTask, as the scheduler would."""
    from moto.moto_api import state_manager

    state_manager.set_transition(
        model_name="ecs::task", transition={"progression": "manual", "times": 10**12}
    )


def reset_state() -> None:
    global THROTTLE
    keep_ecs_tasks_running()
    REALISM.clear()
    INSTANCE_REALISM.clear()
    QUEUE_REALISM.clear()
    THROTTLE = None
    set_seed(None)
    with COND:
        ACTIONS.clear()
        DEPARTED.clear()
        IMDS_LAG.clear()
        COND.notify_all()


# ---------------------------------------------------------------------------
# Notifications (SQS directly, or SNS which fans out to its subscriptions)
# ---------------------------------------------------------------------------
def deliver(target_arn: str, body: str, subject: str) -> None:
    """Send body to an SQS queue or SNS topic ARN through moto's backends.

    Raises on an unknown/unsupported target so PutLifecycleHook can fail the
    way AWS does when the test notification cannot be published.
    """
    parts = target_arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ValueError(f"not an ARN: {target_arn}")
    _, _, service, region, account, resource = parts
    if service == "sqs":
        sqs_backends[account][region].send_message(resource, body)
    elif service == "sns":
        sns_backends[account][region].publish(body, arn=target_arn, subject=subject)
    else:
        raise ValueError(f"unsupported notification target: {target_arn}")


def send_test_notification(backend: AutoScalingBackend, group: FakeAutoScalingGroup, target_arn: str, role_arn: str | None) -> None:
    # Shape of real captures (as in the Auto Scaling docs): no instance, token or hook.
    body = {
        "AccountId": backend.account_id,
        "RequestId": str(uuid.uuid4()),
        "AutoScalingGroupARN": group.arn,
        "AutoScalingGroupName": group.name,
        "Service": "AWS Auto Scaling",
        "Event": "autoscaling:TEST_NOTIFICATION",
        "Time": iso_now(),
    }
    try:
        deliver(target_arn, json.dumps(body), f'Auto Scaling: test notification for group "{group.name}"')
    except Exception as exc:  # queue/topic missing, bad ARN, ...
        log.info("test notification to %s failed: %s", target_arn, exc)
        # AWS's wording for this failure (seen in CloudFormation errors).
        raise ValidationError(
            f"Unable to publish test message to notification target {target_arn} "
            f"using IAM role {role_arn}. Please check your target and role "
            "configuration and try to put lifecycle hook again."
        )


def default_route(transition: str) -> tuple[str, str]:
    """(Origin, Destination) of a plain launch or termination."""
    return ("EC2", "AutoScalingGroup") if transition == LAUNCHING else ("AutoScalingGroup", "EC2")


def send_action_notification(
    backend: AutoScalingBackend,
    group_name: str,
    hook: LifecycleHook,
    instance_id: str,
    token: str,
    origin: str,
    destination: str,
    at: str | None = None,
) -> None:
    target = getattr(hook, "notification_target_arn", None)
    if not target:
        return  # EventBridge-only hook: nothing to emulate.
    launching = hook.lifecycle_transition == LAUNCHING
    # The flat hook message as Auto Scaling sends it; Origin/Destination as documented for warm pools.
    body: dict[str, Any] = {
        "Origin": origin,
        "Destination": destination,
        "LifecycleHookName": hook.name,
        "AccountId": backend.account_id,
        "RequestId": str(uuid.uuid4()),
        "LifecycleTransition": hook.lifecycle_transition,
        "AutoScalingGroupName": group_name,
        "Service": "AWS Auto Scaling",
        "Time": at or iso_now(),
        "EC2InstanceId": instance_id,
        "LifecycleActionToken": token,
    }
    metadata = getattr(hook, "notification_metadata", None)
    if metadata:
        body["NotificationMetadata"] = metadata
    verb = "LAUNCHING" if launching else "TERMINATING"
    # Note the double space: that is how AWS's SNS subject reads.
    subject = f"Auto Scaling:  Lifecycle action '{verb}' for instance {instance_id} in progress."
    try:
        deliver(target, json.dumps(body), subject)
    except Exception as exc:  # target deleted after the hook was put: AWS just loses it
        log.warning("lifecycle notification to %s failed: %s", target, exc)


# ---------------------------------------------------------------------------
# Lifecycle machinery (all called with LOCK held)
# ---------------------------------------------------------------------------
def group_hooks(group: FakeAutoScalingGroup, transition: str | None = None) -> list[LifecycleHook]:
    backend = group.autoscaling_backend
    # A group still being constructed (or already deleted) has no live hooks.
    if backend.autoscaling_groups.get(group.name) is not group:
        return []
    return [
        h
        for h in backend.lifecycle_hooks.values()
        if h.auto_scaling_group_name == group.name and (transition is None or h.lifecycle_transition == transition)
    ]


def find_hook(backend: AutoScalingBackend, group_name: str, hook_name: str) -> LifecycleHook | None:
    # moto keys hooks as "<group>_<hook>".
    return backend.lifecycle_hooks.get(f"{group_name}_{hook_name}")


def pending_actions(instance_id: str, transition: str | None = None) -> list[LifecycleAction]:
    return [
        a
        for a in ACTIONS.values()
        if a.state == "pending" and a.instance_id == instance_id and (transition is None or a.transition == transition)
    ]


def cancel_actions(instance_ids: list[str] | set[str]) -> None:
    for a in ACTIONS.values():
        if a.state == "pending" and a.instance_id in instance_ids:
            a.state, a.finished_at = "cancelled", iso_now()


def imds_lag_begin(group: FakeAutoScalingGroup, instance_id: str) -> None:
    """Call just before an instance's target state changes: with imds_target_lag (the
    instance's, else its group's), IMDS keeps giving the state it gives now for that long."""
    lag = INSTANCE_REALISM.get(instance_id, {}).get("imds_target_lag")
    if lag is None:
        lag = knob(group.name, "imds_target_lag")
    if lag and lag > 0:
        shows = target_lifecycle_state(instance_id)  # what IMDS gives now (a running lag included)
        IMDS_LAG[instance_id] = (time.monotonic() + lag, shows)


def start_actions(
    group: FakeAutoScalingGroup, state: InstanceState, hooks: list[LifecycleHook], route: tuple[str, str] | None = None
) -> None:
    """One action (token + notification) per hook.  route is (Origin,
    Destination); by default that of a plain launch or termination."""
    backend = group.autoscaling_backend
    now = time.monotonic()
    for hook in hooks:
        origin, destination = route or default_route(hook.lifecycle_transition)
        token = str(uuid.uuid4())
        hb = int(hook.heartbeat_timeout)
        global_deadline = now + int(getattr(hook, "global_timeout", 100 * hb))
        ACTIONS[token] = LifecycleAction(
            token=token,
            backend=backend,
            group_name=group.name,
            hook_name=hook.name,
            instance_id=state.instance.id,
            transition=hook.lifecycle_transition,
            default_result=hook.default_result,
            heartbeat_timeout=hb,
            deadline=min(now + hb, global_deadline),
            global_deadline=global_deadline,
            origin=origin,
            destination=destination,
        )
        delay = knob(group.name, "notification_delay")
        # AWS sends the notification "while the instance is in a wait state", with no promise
        # of when: the hook's timer already runs.
        if delay > 0:
            def later(hook=hook, token=token, origin=origin, destination=destination, instance_id=state.instance.id) -> None:
                with LOCK:
                    action = ACTIONS.get(token)
                    if action is not None:  # None: POST /moto-api/reset came first
                        send_action_notification(backend, group.name, hook, instance_id, token, origin, destination, action.started_at)

            timer = threading.Timer(delay, later)
            timer.daemon = True
            timer.start()
        else:
            send_action_notification(backend, group.name, hook, state.instance.id, token, origin, destination)
        lag = knob(group.name, "describe_lag")
        if lag > 0:
            state.__dict__["describe_lag_until"] = now + lag
            state.__dict__.setdefault("describe_lag_shows", state.__dict__.get("state_before_wait", "InService"))
    COND.notify_all()


# --- warm pools ---------------------------------------------------------------
# moto stores the warm pool configuration (group.warm_pool, incl.
# InstanceReusePolicy) but never puts an instance in it.  Here the pool's
# instances are InstanceState objects kept in group.warm_instances, *not* in
# group.instance_states, so nothing of moto's (capacity, ELB registration,
# DescribeAutoScalingGroups' Instances) sees them.  Each one carries
# warm_target, the steady state it is heading for (what IMDS reports).
POOL_STATES = ("Stopped", "Running", "Hibernated")
WARM_STEADY = tuple(f"Warmed:{p}" for p in POOL_STATES)


def has_warm_pool(group: FakeAutoScalingGroup) -> bool:
    # getattr: moto's constructor sizes the group before it sets warm_pool.
    return getattr(group, "warm_pool", None) is not None or bool(group.__dict__.get("warm_instances"))


def warm_instances(group: FakeAutoScalingGroup) -> list[InstanceState]:
    return group.__dict__.setdefault("warm_instances", [])


def reuse_on_scale_in(group: FakeAutoScalingGroup) -> bool:
    pool = getattr(group, "warm_pool", None)
    policy = (pool.instance_reuse_policy or {}) if pool is not None else {}
    return str(policy.get("ReuseOnScaleIn", False)).lower() == "true"


def warmed_state(group: FakeAutoScalingGroup) -> str:
    """Warmed:Stopped | Warmed:Running | Warmed:Hibernated per PoolState."""
    pool = getattr(group, "warm_pool", None)
    pool_state = getattr(pool, "pool_state", None)
    return f"Warmed:{pool_state if pool_state in POOL_STATES else 'Stopped'}"


def return_to_warm_pool(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    """Scale-in with ReuseOnScaleIn: the victim leaves the group for the warm
    pool.  Terminating hooks run (Warmed:Pending:Wait, Origin
    AutoScalingGroup, Destination WarmPool); without any it is warmed at once."""
    group.instance_states = [s for s in group.instance_states if s is not state]
    warm_instances(group).append(state)
    state.warm_target = warmed_state(group)
    hooks = group_hooks(group, TERMINATING)
    if not hooks:
        settle_in_warm_pool(group, state)
        return
    state.lifecycle_state = "Warmed:Pending:Wait"
    start_actions(group, state, hooks, ("AutoScalingGroup", "WarmPool"))


def settle_in_warm_pool(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    """Hooks done: Warmed:<PoolState>; the EC2 instance is stopped unless the
    pool keeps its instances running (a hibernated one reads "stopped" too)."""
    state.warm_target = state.lifecycle_state = warmed_state(group)
    if state.lifecycle_state != "Warmed:Running":
        try:
            group.autoscaling_backend.ec2_backend.stop_instances([state.instance.id])
        except Exception as exc:
            log.warning("EC2 stop of %s failed: %s", state.instance.id, exc)


def take_from_warm_pool(group: FakeAutoScalingGroup, count: int, exclude: Collection[str]) -> int:
    """Scale-out: move up to count warmed instances (oldest first) into the
    group; returns how many.  Launching hooks see Origin WarmPool."""
    ready = [s for s in warm_instances(group) if s.lifecycle_state in WARM_STEADY and s.instance.id not in exclude][:count]
    hooks = group_hooks(group, LAUNCHING)
    for state in ready:
        imds_lag_begin(group, state.instance.id)
        warm_instances(group).remove(state)
        state.__dict__.pop("warm_target", None)
        try:
            group.autoscaling_backend.ec2_backend.start_instances([state.instance.id])
        except Exception as exc:
            log.warning("EC2 start of %s failed: %s", state.instance.id, exc)
        group.instance_states.append(state)
        if hooks:
            state.lifecycle_state = "Pending:Wait"
            start_actions(group, state, hooks, ("WarmPool", "AutoScalingGroup"))
        else:
            state.lifecycle_state = "InService"
    return len(ready)


def begin_warm_termination(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    """TerminateInstanceInAutoScalingGroup on a warmed instance: terminating
    hooks run (Warmed:Terminating:Wait, Origin WarmPool, Destination EC2),
    then it is terminated."""
    imds_lag_begin(group, state.instance.id)
    state.warm_target = "Warmed:Terminated"
    hooks = group_hooks(group, TERMINATING)
    if not hooks:
        terminate_warm_now(group, state)
        return
    state.lifecycle_state = "Warmed:Terminating:Wait"
    start_actions(group, state, hooks, ("WarmPool", "EC2"))


def terminate_warm_now(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    cancel_actions({state.instance.id})
    if state in warm_instances(group):
        warm_instances(group).remove(state)
    DEPARTED[state.instance.id] = "Warmed:Terminated"
    try:
        group.autoscaling_backend.ec2_backend.terminate_instances([state.instance.id])
    except Exception as exc:
        log.warning("EC2 terminate of %s failed: %s", state.instance.id, exc)


def begin_termination(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    """Take a victim out of service: back to the warm pool if the group's
    warm pool has ReuseOnScaleIn, else Terminating:Wait if the group has
    terminating hooks, otherwise terminate it right away."""
    imds_lag_begin(group, state.instance.id)
    cancel_actions({state.instance.id})  # e.g. a victim still in Pending:Wait
    if reuse_on_scale_in(group):
        return_to_warm_pool(group, state)
        return
    hooks = group_hooks(group, TERMINATING)
    if not hooks:
        terminate_now(group, state)
        return
    state.__dict__["state_before_wait"] = state.lifecycle_state
    state.__dict__.pop("describe_lag_shows", None)
    state.lifecycle_state = "Terminating:Wait"
    start_actions(group, state, hooks)


def terminate_now(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    """Remove the instance from its group and terminate it in EC2.  No
    replacement is launched here: capacity was accounted for when the victim
    was chosen."""
    backend = group.autoscaling_backend
    state.lifecycle_state = "Terminating:Proceed"
    group.instance_states = [s for s in group.instance_states if s is not state]
    DEPARTED[state.instance.id] = "Terminated"
    try:
        # The model call does not notify Auto Scaling (only EC2's HTTP
        # handler does), so the group is not "refilled" behind our back.
        backend.ec2_backend.terminate_instances([state.instance.id])
    except Exception as exc:
        log.warning("EC2 terminate of %s failed: %s", state.instance.id, exc)
    if group.name in backend.autoscaling_groups:
        backend.update_attached_elbs(group.name)


def find_instance_state(backend: AutoScalingBackend, group_name: str, instance_id: str) -> tuple[FakeAutoScalingGroup | None, InstanceState | None]:
    group = backend.autoscaling_groups.get(group_name)
    if group is None:
        return None, None
    for s in group.instance_states + group.__dict__.get("warm_instances", []):
        if s.instance.id == instance_id:
            return group, s
    return group, None


def finish_action(action: LifecycleAction, result: str, how: str) -> None:
    """Complete one action (how = completed | timed-out) and move the instance
    on when nothing else holds it."""
    action.state, action.result, action.finished_at = how, result, iso_now()
    group, state = find_instance_state(action.backend, action.group_name, action.instance_id)
    if state is None:
        return  # instance already gone (group deleted, EC2-terminated, ...)
    if action.transition == TERMINATING:
        if result == "ABANDON":
            # ABANDON on a terminating instance skips the remaining hooks.
            cancel_actions({action.instance_id})
        if not pending_actions(action.instance_id, TERMINATING):
            # Both results end the wait the same way.
            if state.lifecycle_state == "Warmed:Pending:Wait":
                settle_in_warm_pool(group, state)
            elif state.lifecycle_state.startswith("Warmed:"):
                terminate_warm_now(group, state)
            else:
                terminate_now(group, state)
    else:  # launching
        if result == "ABANDON":
            cancel_actions({action.instance_id})
            terminate_now(group, state)
            # AWS replaces an abandoned launch.
            group.set_desired_capacity(group.desired_capacity)
        elif not pending_actions(action.instance_id, LAUNCHING):
            state.lifecycle_state = "InService"
            action.backend.update_attached_elbs(group.name)
            action.backend.update_attached_target_groups(group.name)
    COND.notify_all()


def timeout_loop() -> None:
    """Background thread: apply DefaultResult when a heartbeat deadline (or
    the global timeout) passes.  Sleeps exactly until the next deadline."""
    with COND:
        while True:
            now = time.monotonic()
            for action in list(ACTIONS.values()):
                if action.state == "pending" and action.deadline <= now:
                    try:
                        log.info("lifecycle action %s timed out -> %s", action.token, action.default_result)
                        finish_action(action, action.default_result, "timed-out")
                    except Exception:
                        log.exception("applying default result failed")
            # Recompute after processing: finishing may create new actions.
            deadlines = [a.deadline for a in ACTIONS.values() if a.state == "pending"]
            COND.wait(max(0.0, min(deadlines) - time.monotonic()) if deadlines else None)


def lookup_action(backend: AutoScalingBackend, group_name: str, hook_name: str, token: str | None, instance_id: str | None) -> LifecycleAction:
    """Validate a Complete/Heartbeat request and return its pending action,
    raising AWS's ValidationError texts otherwise."""
    if not group_name:
        raise ValidationError("1 validation error detected: Value null at 'autoScalingGroupName' failed to satisfy constraint: Member must not be null")
    if not hook_name:
        raise ValidationError("1 validation error detected: Value null at 'lifecycleHookName' failed to satisfy constraint: Member must not be null")
    if not token and not instance_id:
        raise ValidationError("Either LifecycleActionToken or InstanceId must be specified.")
    if group_name not in backend.autoscaling_groups:
        raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup '{group_name}' not found")
    if find_hook(backend, group_name, hook_name) is None:
        # Not a verified AWS text; deliberately distinct from "No active
        # Lifecycle Action found" so a wrong hook name is not mistaken for
        # an already-finished action.
        raise ValidationError(f"Lifecycle Hook '{hook_name}' not found for AutoScalingGroup '{group_name}'")
    for a in ACTIONS.values():
        if a.state != "pending" or a.group_name != group_name or a.hook_name != hook_name or a.backend is not backend:
            continue
        if token:
            if a.token == token and (not instance_id or a.instance_id == instance_id):
                return a
        elif a.instance_id == instance_id:
            return a
    raise no_active_action(token, instance_id)


def no_active_action(token: str | None, instance_id: str | None) -> ValidationError:
    if token:
        return ValidationError(f"No active Lifecycle Action found with token {token}")
    return ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")


def check_no_action_window(action: LifecycleAction, token: str | None, instance_id: str | None) -> None:
    """no_action_window: for this long after the action began, Auto Scaling does not know it
    yet (eventual consistency), and Complete / Heartbeat answer as for a finished action."""
    window = knob(action.group_name, "no_action_window")
    if window > 0 and time.monotonic() - action.began < window:
        raise no_active_action(token, instance_id)


# ---------------------------------------------------------------------------
# moto patches
# ---------------------------------------------------------------------------
def target_instance_count(group: FakeAutoScalingGroup) -> int:
    """Number of instances the group wants; mirrors moto's own computation in
    FakeAutoScalingGroup.set_desired_capacity (incl. MixedInstancesPolicy)."""
    target_capacity = group.desired_capacity or 0
    policy = group.mixed_instances_policy or {}
    overrides = policy.get("LaunchTemplate", {}).get("Overrides", [])
    if not overrides:
        return target_capacity
    distribution = policy.get("InstancesDistribution", {})
    on_demand_base = int(distribution.get("OnDemandBaseCapacity", 0))
    percent_above_base = int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100))
    weight_str = overrides[0].get("WeightedCapacity", "1")
    weight = (int(weight_str) if weight_str.isdigit() else 1) or 1
    if on_demand_base >= target_capacity:
        on_demand, spot = target_capacity, 0
    else:
        above = target_capacity - on_demand_base
        on_demand_above = int(above * percent_above_base) / 100.0
        spot = int(above - on_demand_above)
        on_demand = int(on_demand_base + on_demand_above)
    return -(-on_demand // weight) + -(-spot // weight)  # ceil divisions


def filter_by_every_private_ip() -> None:
    """DescribeInstances' filter `network-interface.addresses.private-ip-address`: every private
    IPv4 address of every network interface, secondary ones included (`private-ip-address` only
    matches the primary address: aws-sdk-ec2 DescribeInstances input, "Filters"). moto 5.2.5
    raises NotImplementedError for it."""
    from moto.ec2 import utils as ec2_utils
    from moto.ec2.models.instances import Instance as Ec2Instance

    def every_private_ip(self: Any) -> list[str]:
        ips = [self.private_ip] if getattr(self, "private_ip", None) else []
        for nic in getattr(self, "nics", {}).values():
            for a in getattr(nic, "private_ip_addresses", None) or []:
                ip = a.get("PrivateIpAddress") if isinstance(a, dict) else None
                if ip and ip not in ips:
                    ips.append(ip)
        return ips

    Ec2Instance.lastcall_every_private_ip = property(every_private_ip)  # type: ignore[attr-defined]
    ec2_utils.filter_dict_attribute_mapping["network-interface.addresses.private-ip-address"] = (
        "lastcall_every_private_ip"
    )


def install_patches() -> None:
    keep_ecs_tasks_running()
    filter_by_every_private_ip()
    orig_set_desired = FakeAutoScalingGroup.set_desired_capacity
    orig_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances
    orig_terminate_instance = AutoScalingBackend.terminate_instance
    orig_detach = AutoScalingBackend.detach_instances
    orig_notify_terminate = AutoScalingBackend.notify_terminate_instances
    orig_delete_group = AutoScalingBackend.delete_auto_scaling_group
    orig_call_action = AutoScalingResponse.call_action
    orig_backenddict_reset = BackendDict.reset.__func__  # classmethod

    # --- group capacity ----------------------------------------------------
    def set_desired_capacity(self: FakeAutoScalingGroup, new_capacity: int | None) -> None:
        # Groups without hooks or a warm pool keep moto's behaviour untouched.
        if not group_hooks(self) and not has_warm_pool(self):
            return orig_set_desired(self, new_capacity)
        self.desired_capacity = self.min_size if new_capacity is None else new_capacity
        reconcile(self)

    def reconcile(self: FakeAutoScalingGroup, exclude: Collection[str] = ()) -> None:
        """Launch or take out instances until the group holds its desired
        capacity.  exclude: instance ids the warm pool must not hand back
        (the victim of a TerminateInstance without decrement)."""
        # moto counts only InService instances and picks victims from *all*
        # instances (incl. Standby and ones already terminating); here victims
        # come only from instances that count towards capacity, so an
        # instance in Terminating:Wait is neither replaced nor picked again.
        counted = [s for s in self.instance_states if s.lifecycle_state in CAPACITY_STATES]
        delta = target_instance_count(self) - len(counted)
        if delta > 0:
            # A warm pool's instances are used before new ones are launched.
            delta -= take_from_warm_pool(self, delta, exclude)
            if delta > 0:
                self.replace_autoscaling_group_instances(delta, self.get_propagated_tags())
        elif delta < 0:
            # Like moto: oldest first (list order), never protected ones.
            victims = [s for s in counted if not s.protected_from_scale_in][: -delta]
            for state in victims:
                begin_termination(self, state)
        backend = self.autoscaling_backend
        if self.name in backend.autoscaling_groups:
            backend.update_attached_elbs(self.name)
            backend.update_attached_target_groups(self.name)

    def replace_autoscaling_group_instances(self: FakeAutoScalingGroup, count_needed: int, propagated_tags: dict[str, str]) -> None:
        before = {id(s) for s in self.instance_states}
        orig_replace(self, count_needed, propagated_tags)
        hooks = group_hooks(self, LAUNCHING)
        if not hooks:
            return
        for state in self.instance_states:
            if id(state) not in before:
                state.lifecycle_state = "Pending:Wait"
                start_actions(self, state, hooks)

    FakeAutoScalingGroup.set_desired_capacity = set_desired_capacity
    FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances

    # --- backend operations --------------------------------------------------
    def terminate_instance(self: AutoScalingBackend, instance_id: str, should_decrement: bool) -> TerminateInstanceActivity:
        with LOCK:
            found = next(
                ((g, s) for g in self.autoscaling_groups.values() for s in g.instance_states if s.instance.id == instance_id),
                None,
            )
            if found is None:
                warm = next(
                    ((g, s) for g in self.autoscaling_groups.values() for s in g.__dict__.get("warm_instances", []) if s.instance.id == instance_id),
                    None,
                )
                if warm is None:  # moto would raise StopIteration -> HTTP 500
                    raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
                # An instance in the warm pool: terminated (after the terminating
                # hooks); desired capacity is not affected.  Repeat calls, and
                # calls while it is still on its way into the pool, do nothing.
                group, state = warm
                if state.lifecycle_state in WARM_STEADY:
                    begin_warm_termination(group, state)
                return TerminateInstanceActivity(state.instance, group.desired_capacity)
            group, state = found
            if not group_hooks(group, TERMINATING) and not reuse_on_scale_in(group):
                imds_lag_begin(group, state.instance.id)
                activity = orig_terminate_instance(self, instance_id, should_decrement)
                DEPARTED[instance_id] = "Terminated"  # moto detached it first
                return activity
            original_size = group.desired_capacity
            if not state.lifecycle_state.startswith("Terminating"):  # repeat call: no-op
                begin_termination(group, state)
                if should_decrement:
                    group.desired_capacity = original_size - 1
                # Without decrement this launches the replacement right away
                # (never the victim itself back from the warm pool).
                reconcile(group, exclude={instance_id})
            return TerminateInstanceActivity(state.instance, original_size)

    def detach_instances(self: AutoScalingBackend, group_name: str, instance_ids: list[str], should_decrement: bool) -> Any:
        with LOCK:
            cancel_actions(set(instance_ids))
            group = self.autoscaling_groups.get(group_name)
            for s in group.instance_states if group else []:
                if s.instance.id in instance_ids:
                    DEPARTED[s.instance.id] = "Detached"
            return orig_detach(self, group_name, instance_ids, should_decrement)

    def notify_terminate_instances(self: AutoScalingBackend, instance_ids: list[str]) -> None:
        # EC2 TerminateInstances called directly: AWS does not wait for hooks.
        with LOCK:
            for group in self.autoscaling_groups.values():
                for s in group.instance_states:
                    if s.instance.id in instance_ids:
                        DEPARTED[s.instance.id] = "Terminated"
                for s in list(group.__dict__.get("warm_instances", [])):
                    if s.instance.id in instance_ids:  # leaves the warm pool
                        warm_instances(group).remove(s)
                        DEPARTED[s.instance.id] = "Warmed:Terminated"
            cancel_actions(set(instance_ids))
            orig_notify_terminate(self, instance_ids)

    def delete_auto_scaling_group(self: AutoScalingBackend, group_name: str) -> None:
        # Hooks are not run on group deletion here (AWS runs them only on a
        # non-forced delete, which moto does not distinguish); instances are
        # terminated at once and the group's hooks are deleted with it.
        with LOCK:
            group = self.autoscaling_groups.get(group_name)
            if group is not None:
                ids = [s.instance.id for s in group.instance_states]
                warm_ids = [s.instance.id for s in group.__dict__.get("warm_instances", [])]
                group.__dict__["warm_instances"] = []
                for i in ids:
                    DEPARTED[i] = "Terminated"
                for i in warm_ids:
                    DEPARTED[i] = "Warmed:Terminated"
                ids += warm_ids
                cancel_actions(set(ids))
                if ids:
                    try:
                        self.ec2_backend.terminate_instances(ids)
                    except Exception as exc:
                        log.warning("EC2 terminate on group delete failed: %s", exc)
                group.instance_states = []
                for key in [k for k, h in self.lifecycle_hooks.items() if h.auto_scaling_group_name == group_name]:
                    del self.lifecycle_hooks[key]
            orig_delete_group(self, group_name)

    def describe_auto_scaling_instances(self: AutoScalingBackend, instance_ids: list[str]) -> list[InstanceState]:
        # Warm-pool instances are listed too (with their Warmed:* state and
        # the group's name), after each group's own instances.
        out: list[InstanceState] = []
        now = time.monotonic()
        for group in self.autoscaling_groups.values():
            for s in group.instance_states + group.__dict__.get("warm_instances", []):
                if not instance_ids or s.instance.id in instance_ids:
                    # Auto Scaling is eventually consistent: for a while after an action
                    # begins, a describe may still show the state before it.
                    if s.__dict__.get("describe_lag_until", 0) > now:
                        shown = copy.copy(s)
                        shown.lifecycle_state = s.__dict__.get("describe_lag_shows", "InService")
                        out.append(shown)
                        continue
                    out.append(s)
        return out

    def warm_pool_size(self: FakeAutoScalingGroup) -> int | None:
        # DescribeAutoScalingGroups' WarmPoolSize: only when there is a pool.
        return len(self.__dict__.get("warm_instances", [])) if getattr(self, "warm_pool", None) is not None else None

    FakeAutoScalingGroup.warm_pool_size = property(warm_pool_size)
    AutoScalingBackend.describe_auto_scaling_instances = describe_auto_scaling_instances
    AutoScalingBackend.terminate_instance = terminate_instance
    AutoScalingBackend.detach_instances = detach_instances
    AutoScalingBackend.notify_terminate_instances = notify_terminate_instances
    AutoScalingBackend.delete_auto_scaling_group = delete_auto_scaling_group

    # --- HTTP actions ----------------------------------------------------------
    def call_action(self: AutoScalingResponse) -> Any:
        # Serialise all Auto Scaling requests with the timeout thread.
        with LOCK:
            return orig_call_action(self)

    def put_lifecycle_hook(self: AutoScalingResponse) -> EmptyResult:
        backend = self.autoscaling_backend
        group_name = self._get_param("AutoScalingGroupName")
        name = self._get_param("LifecycleHookName")
        transition = self._get_param("LifecycleTransition")
        heartbeat = self._get_int_param("HeartbeatTimeout")
        default_result = self._get_param("DefaultResult")
        target = self._get_param("NotificationTargetARN")
        role = self._get_param("RoleARN")
        metadata = self._get_param("NotificationMetadata")

        group = backend.autoscaling_groups.get(group_name)
        if group is None:
            raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup '{group_name}' not found")
        hook = find_hook(backend, group_name, name)
        if hook is None and not transition:
            raise ValidationError("1 validation error detected: Value null at 'lifecycleTransition' failed to satisfy constraint: Member must not be null")
        if transition is not None and transition not in (LAUNCHING, TERMINATING):
            raise ValidationError(f"Invalid Lifecycle Transition name: {transition}")
        # AWS's floor is 30 s; lower values are accepted here to keep tests fast.
        if heartbeat is not None and not 1 <= heartbeat <= 7200:
            raise ValidationError(f"Heartbeat timeout must be between 1 and 7200 seconds (got {heartbeat}).")
        if default_result is not None and default_result not in RESULTS:
            raise ValidationError(f"Invalid value for DefaultResult: {default_result}. Valid values are CONTINUE and ABANDON.")
        if metadata is not None and not 1 <= len(metadata) <= 4000:
            raise ValidationError("NotificationMetadata must be between 1 and 4000 characters long.")

        # The test message goes out when a target is given (create or
        # update); failing to deliver it fails the call and changes nothing.
        if target:
            send_test_notification(backend, group, target, role or getattr(hook, "role_arn", None))

        if hook is None:
            hook = LifecycleHook(name, group_name, transition, heartbeat, default_result)
            # moto hard-codes these two; start from "unset".
            hook.role_arn = None
            hook.notification_target_arn = None
            hook.notification_metadata = None
            backend.lifecycle_hooks[f"{group_name}_{name}"] = hook
        else:  # PutLifecycleHook on an existing hook updates the given fields
            if transition:
                hook.lifecycle_transition = transition
            if heartbeat is not None:
                hook.heartbeat_timeout = heartbeat
            if default_result:
                hook.default_result = default_result
        if target is not None:
            hook.notification_target_arn = target or None
        if role is not None:
            hook.role_arn = role or None
        if metadata is not None:
            hook.notification_metadata = metadata
        hook.global_timeout = min(172800, 100 * int(hook.heartbeat_timeout))
        return EmptyResult()

    def delete_lifecycle_hook(self: AutoScalingResponse) -> EmptyResult:
        backend = self.autoscaling_backend
        group_name = self._get_param("AutoScalingGroupName")
        name = self._get_param("LifecycleHookName")
        # AWS: outstanding actions are completed, ABANDON for launching and
        # CONTINUE for terminating instances.  The hook goes first so that the
        # replacement for an abandoned launch is not held by it again.
        backend.delete_lifecycle_hook(group_name, name)
        for a in list(ACTIONS.values()):
            if a.state == "pending" and a.backend is backend and a.group_name == group_name and a.hook_name == name:
                finish_action(a, "ABANDON" if a.transition == LAUNCHING else "CONTINUE", "completed")
        return EmptyResult()

    def complete_lifecycle_action(self: AutoScalingResponse) -> EmptyResult:
        result = self._get_param("LifecycleActionResult")
        action = lookup_action(
            self.autoscaling_backend,
            self._get_param("AutoScalingGroupName"),
            self._get_param("LifecycleHookName"),
            self._get_param("LifecycleActionToken"),
            self._get_param("InstanceId"),
        )
        check_no_action_window(action, self._get_param("LifecycleActionToken"), self._get_param("InstanceId"))
        if result not in RESULTS:
            raise ValidationError(f"Invalid value for LifecycleActionResult: {result}. Valid values are CONTINUE and ABANDON.")
        finish_action(action, result, "completed")
        return EmptyResult()

    def record_lifecycle_action_heartbeat(self: AutoScalingResponse) -> EmptyResult:
        group_name = self._get_param("AutoScalingGroupName")
        hook_name = self._get_param("LifecycleHookName")
        action = lookup_action(
            self.autoscaling_backend,
            group_name,
            hook_name,
            self._get_param("LifecycleActionToken"),
            self._get_param("InstanceId"),
        )
        check_no_action_window(action, self._get_param("LifecycleActionToken"), self._get_param("InstanceId"))
        hook = find_hook(self.autoscaling_backend, group_name, hook_name)
        timeout = int(hook.heartbeat_timeout) if hook else action.heartbeat_timeout
        # Restart the timer at the full timeout, capped by the global timeout.
        action.deadline = min(time.monotonic() + timeout, action.global_deadline)
        action.heartbeats += 1
        COND.notify_all()
        return EmptyResult()

    # --- warm pools (moto stores the configuration; the instances are ours) ---
    def warm_pool_group(self: AutoScalingResponse) -> FakeAutoScalingGroup:
        group_name = self._get_param("AutoScalingGroupName")
        group = self.autoscaling_backend.autoscaling_groups.get(group_name)
        if group is None:  # moto: IndexError -> HTTP 500
            raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup '{group_name}' not found")
        return group

    def put_warm_pool(self: AutoScalingResponse) -> Any:
        warm_pool_group(self)
        pool_state = self._get_param("PoolState")
        if pool_state is not None and pool_state not in POOL_STATES:
            raise ValidationError(
                f"1 validation error detected: Value '{pool_state}' at 'poolState' failed to satisfy constraint: "
                "Member must satisfy enum value set: [Running, Stopped, Hibernated]"
            )
        return orig_put_warm_pool(self)

    def describe_warm_pool(self: AutoScalingResponse) -> Any:
        group = warm_pool_group(self)
        return ActionResult({"WarmPoolConfiguration": group.warm_pool, "Instances": list(group.__dict__.get("warm_instances", []))})

    def delete_warm_pool(self: AutoScalingResponse) -> Any:
        # The pool's instances are terminated at once (no hooks run, like
        # ForceDelete); their pending actions are cancelled.
        group = warm_pool_group(self)
        for state in list(group.__dict__.get("warm_instances", [])):
            terminate_warm_now(group, state)
        return orig_delete_warm_pool(self)

    orig_put_warm_pool = AutoScalingResponse.put_warm_pool
    orig_delete_warm_pool = AutoScalingResponse.delete_warm_pool
    AutoScalingResponse.put_warm_pool = put_warm_pool
    AutoScalingResponse.describe_warm_pool = describe_warm_pool
    AutoScalingResponse.delete_warm_pool = delete_warm_pool
    # InstanceLifecyclePolicy (November 2025): moto 5.2.5 ignores it. Kept on the group and
    # shown by DescribeAutoScalingGroups (moto serialises the attribute as the API's shape).
    # Only shown, not acted on: ABANDON still terminates here.
    policy_key = "InstanceLifecyclePolicy.RetentionTriggers.TerminateHookAbandon"

    def with_lifecycle_policy(orig: Any) -> Any:
        def action(self: AutoScalingResponse) -> Any:
            out = orig(self)
            value = (self.querystring.get(policy_key) or [None])[0]
            if value:
                group = self.autoscaling_backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
                if group is not None:
                    group.instance_lifecycle_policy = {"RetentionTriggers": {"TerminateHookAbandon": value}}
            return out

        return action

    AutoScalingResponse.create_auto_scaling_group = with_lifecycle_policy(AutoScalingResponse.create_auto_scaling_group)
    AutoScalingResponse.update_auto_scaling_group = with_lifecycle_policy(AutoScalingResponse.update_auto_scaling_group)
    AutoScalingResponse.call_action = call_action
    AutoScalingResponse.put_lifecycle_hook = put_lifecycle_hook
    AutoScalingResponse.delete_lifecycle_hook = delete_lifecycle_hook
    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat

    # POST /moto-api/reset wipes moto's backends; forget our actions too.
    def reset(cls: type) -> None:
        with LOCK:
            orig_backenddict_reset(cls)
            reset_state()

    BackendDict.reset = classmethod(reset)

    # --- SQS wake-ups -----------------------------------------------------------
    # moto wakes a waiting long poll when a message is sent, but not when a message is made
    # visible again with ChangeMessageVisibility(0); waiters then sleep out moto's 1 s poll
    # step. Real SQS returns such a message to a waiting long poll promptly, which is what a
    # shared queue relies on when instances release each other's messages.
    from moto.sqs.models import SQSBackend

    orig_change_visibility = SQSBackend.change_message_visibility

    # The same holds when a message's visibility timeout runs out: without a wake-up, waiting
    # long polls notice it only on their own 1 s poll step, and the step of the consumer that set
    # the timeout (it polls again right after the call, so its steps fall on whole seconds after
    # it) comes first, so a held-back message went back to the very consumer that held it back.
    def wake(cond: threading.Condition) -> None:
        with cond:
            cond.notify_all()

    def change_message_visibility(self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
        orig_change_visibility(self, queue_name, receipt_handle, visibility_timeout)
        cond = self.get_queue(queue_name)._messages_lock
        seconds = int(visibility_timeout)
        if seconds == 0:
            wake(cond)
        elif seconds <= 600:
            # moto's visibility has millisecond resolution and is strict ("now > visible_at").
            t = threading.Timer(seconds + 0.002, wake, args=(cond,))
            t.daemon = True
            t.start()

    SQSBackend.change_message_visibility = change_message_visibility

    # moto hands out a standard queue's visible messages oldest first, every time. Real standard
    # queues sample their servers and give only a best-effort order, so by default a receive pass
    # here sees them shuffled: a consumer that keeps releasing messages that are not its own still
    # reaches the others. The queue knobs receive_order and receive_sample change the order and
    # drop messages from a pass (see README.md, "Realism knobs"). FIFO queues keep their order
    # and are never sampled. The order and the sample are drawn only in a receive's own pass
    # (receive_message below sets receiving.pass_), so other readers of Queue.messages (queue
    # attributes, the long-poll wait) neither see them nor use up random numbers.
    from moto.sqs.models import Queue

    orig_messages = Queue.messages
    orig_wait = Queue.wait_for_messages
    receiving = threading.local()

    def messages(self: Any) -> list:
        visible = orig_messages.fget(self)
        current = getattr(receiving, "pass_", None)
        if current is None or current[0] is not self:
            return visible
        _, knobs, r = current
        order = knobs.get("receive_order", "shuffle")
        if order == "shuffle":
            r.shuffle(visible)
        elif order == "oldest_first_jitter":
            keys = [i + r.uniform(0, ORDER_JITTER) for i in range(len(visible))]
            visible = [m for _, m in sorted(zip(keys, visible), key=lambda km: km[0])]
        sample = knobs.get("receive_sample")
        if sample is not None and sample < 1:
            visible = [m for m in visible if r.random() < sample]
        return visible

    def wait_for_messages(self: Any, timeout: float) -> None:
        current = getattr(receiving, "pass_", None)
        receiving.pass_ = None  # the wait looks at every visible message
        try:
            sampled = current is not None and current[0] is self and current[1].get("receive_sample", 1) < 1
            if sampled and orig_messages.fget(self):
                # A long poll whose pass sampled nothing while messages are visible: the next
                # pass comes soon (a long poll queries all servers and answers once it has one).
                time.sleep(SAMPLE_RETRY)
                return
            orig_wait(self, timeout)
        finally:
            receiving.pass_ = current

    Queue.messages = property(messages)
    Queue.wait_for_messages = wait_for_messages

    orig_receive = SQSBackend.receive_message

    def receive_message(self: Any, queue_name: str, count: int, *args: Any, **kwargs: Any) -> list:
        knobs = dict(QUEUE_REALISM.get(queue_name, {}))
        cap = knobs.get("receive_max")
        if cap:
            count = max(1, min(count, int(cap)))
        queue = self.get_queue(queue_name)
        receiving.pass_ = None if queue.fifo_queue else (queue, knobs, rng(f"sqs:{queue_name}"))
        try:
            got = orig_receive(self, queue_name, count, *args, **kwargs)
        finally:
            receiving.pass_ = None
        for m in got:
            CALLS.receive_count(queue_name, int(getattr(m, "approximate_receive_count", 0) or 0))
        return got

    SQSBackend.receive_message = receive_message

    # Who deleted which message (GET /deleted/QUEUE): a test decides "deleted" from this record,
    # never from a message's absence (it may only be out of sight, held by a receiver).
    # delete_message_batch deletes each entry through delete_message.
    orig_delete_message = SQSBackend.delete_message

    def delete_message(self: Any, queue_name: str, receipt_handle: str) -> None:
        queue = self.get_queue(queue_name)
        ids = [m.id for m in list(queue._messages) if m.had_receipt_handle(receipt_handle)]
        orig_delete_message(self, queue_name, receipt_handle)
        for message_id in ids:
            DELETIONS.record(queue_name, message_id, getattr(REQUEST, "key", "-"))

    SQSBackend.delete_message = delete_message

    # sent_age: a message that has been in the queue for a while (its owner died, say), without
    # waiting that long in a test. Only SentTimestamp moves (retention counts from it as well).
    # send_message_batch sends each entry through send_message.
    orig_send_message = SQSBackend.send_message

    def send_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        message = orig_send_message(self, queue_name, *args, **kwargs)
        age = float(QUEUE_REALISM.get(queue_name, {}).get("sent_age", 0) or 0)
        if age > 0 and message.sent_timestamp is not None:
            message.sent_timestamp -= int(age * 1000)
        return message

    SQSBackend.send_message = send_message


# ---------------------------------------------------------------------------
# Live instance data for IMDS
# ---------------------------------------------------------------------------
def find_ec2_instance(instance_id: str) -> tuple[Any, Any] | None:
    """(ec2_backend, instance) for an instance in any account/region already
    in use.  dict.items() is used on purpose: moto's mappings create backends
    on item access, and iterating must not instantiate every region."""
    for _account, per_account in dict.items(ec2_backends):
        for _region, backend in dict.items(per_account):
            for reservation in backend.reservations.values():
                for instance in reservation.instances:
                    if instance.id == instance_id:
                        return backend, instance
    return None


TARGET_STATE = {
    "Pending": "InService",
    "Pending:Wait": "InService",
    "Pending:Proceed": "InService",
    "InService": "InService",
    "Terminating": "Terminated",
    "Terminating:Wait": "Terminated",
    "Terminating:Proceed": "Terminated",
    "Terminated": "Terminated",
    "EnteringStandby": "Standby",
    "Standby": "Standby",
    "Detaching": "Detached",
    "Detached": "Detached",
}


def target_lifecycle_state(instance_id: str) -> str | None:
    """The IMDS autoscaling/target-lifecycle-state value, or None (404) for an
    instance that never belonged to a group.  During an imds_target_lag, the
    value from before the transition."""
    lag = IMDS_LAG.get(instance_id)
    if lag is not None:
        if time.monotonic() < lag[0]:
            return lag[1]
        del IMDS_LAG[instance_id]
    return live_target_state(instance_id)


def live_target_state(instance_id: str) -> str | None:
    for _account, per_account in dict.items(autoscaling_backends):
        for _region, backend in dict.items(per_account):
            for group in backend.autoscaling_groups.values():
                for s in group.instance_states:
                    if s.instance.id == instance_id:
                        return TARGET_STATE.get(s.lifecycle_state, "InService")
                for s in group.__dict__.get("warm_instances", []):
                    if s.instance.id == instance_id:
                        # The steady state it is heading for, also while in
                        # Warmed:Pending:Wait / Warmed:Terminating:Wait.
                        return getattr(s, "warm_target", s.lifecycle_state)
    return DEPARTED.get(instance_id)


# ---------------------------------------------------------------------------
# Request counter (for benchmarks): GET /calls, POST /calls/reset
# ---------------------------------------------------------------------------
class CallCounter:
    """Counts AWS API calls by service and action, and IMDS requests by method
    and path, since start or the last reset.

    The service is the one in the SigV4 credential scope (``sqs``,
    ``autoscaling``, ...); the action comes from ``X-Amz-Target`` (JSON
    protocols), else the ``Action`` parameter of the query string or of the
    form body (query protocols).  Each call is also counted per client (the
    first word of the User-Agent: ``aws-sdk-rust``, ``aws-cli``, ``Boto3``, ...)
    and per access key id, so a benchmark can tell apart its own calls and
    those of each simulated instance.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.since = iso_now()
            self.total = 0
            self.calls: dict[str, dict[str, int]] = {}
            self.clients: dict[str, dict[str, dict[str, int]]] = {}
            self.keys: dict[str, dict[str, dict[str, int]]] = {}
            # access key id -> service -> action -> calls answered Throttling (autoscaling_throttle)
            self.throttled: dict[str, dict[str, dict[str, int]]] = {}
            self.imds: dict[str, int] = {}
            # queue name -> the highest ApproximateReceiveCount a receive handed out
            self.max_receive_count: dict[str, int] = {}
            # TCP connections accepted by the AWS endpoint
            self.connections = 0

    def connection(self) -> None:
        with self.lock:
            self.connections += 1

    def receive_count(self, queue: str, n: int) -> None:
        with self.lock:
            if n > self.max_receive_count.get(queue, 0):
                self.max_receive_count[queue] = n

    @staticmethod
    def _bump(table: dict[str, dict[str, int]], service: str, action: str) -> None:
        per = table.setdefault(service, {})
        per[action] = per.get(action, 0) + 1

    def aws(self, service: str, action: str, client: str, key: str) -> None:
        with self.lock:
            self.total += 1
            self._bump(self.calls, service, action)
            self._bump(self.clients.setdefault(client, {}), service, action)
            self._bump(self.keys.setdefault(key, {}), service, action)

    def throttle(self, service: str, action: str, key: str) -> None:
        with self.lock:
            self._bump(self.throttled.setdefault(key, {}), service, action)

    def imds_request(self, method: str, path: str) -> None:
        name = f"{method} {path}"
        with self.lock:
            self.imds[name] = self.imds.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(
                json.dumps(
                    {
                        "since": self.since,
                        "total": self.total,
                        "calls": self.calls,
                        "clients": self.clients,
                        "keys": self.keys,
                        "throttled": self.throttled,
                        "imds": self.imds,
                        "max_receive_count": self.max_receive_count,
                        "connections": self.connections,
                    }
                )
            )


CALLS = CallCounter()


class Deletions:
    """Every SQS message deleted, per queue: message id -> the access key id that deleted it
    (GET /deleted/QUEUE). Kept for the emulator's life (POST /calls/reset leaves it), so that a
    reset by another test cannot hide a deletion."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_queue: dict[str, dict[str, str]] = {}

    def record(self, queue: str, message_id: str, key: str) -> None:
        with self.lock:
            self.by_queue.setdefault(queue, {})[message_id] = key

    def of(self, queue: str) -> dict[str, str]:
        with self.lock:
            return dict(self.by_queue.get(queue, {}))


DELETIONS = Deletions()
# The request this thread is answering: its access key id (set by CountingApp).
REQUEST = threading.local()


class CountingRequestHandler(MotoRequestHandler):
    """Counts the TCP connections the AWS endpoint accepts (GET /calls: "connections"), so that
    a benchmark can show whether clients reuse them (on AWS each new one is a TLS handshake)."""

    def setup(self) -> None:
        CALLS.connection()
        super().setup()

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header (http.server's send_response writes it): the queue's date_behind.
        at = getattr(REQUEST, "date_at", None)
        return super().date_time_string(at if at is not None and timestamp is None else timestamp)


class CountingApp:
    """WSGI middleware around moto's app that feeds CALLS and applies the global and per-queue
    realism knobs that act on whole requests: autoscaling_throttle and an SQS queue's latency."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        service, action, key = "unknown", "", "-"
        try:
            service, action, key = self.count(environ)
        except Exception:  # counting must never break a request
            log.exception("counting a request failed")
        REQUEST.key = key
        throttle = THROTTLE
        if service == "autoscaling" and throttle is not None and not throttle.allow(key):
            CALLS.throttle(service, action, key)
            request_body(environ)  # read it, as moto would have
            return throttled(start_response)
        latency = 0.0
        behind = 0.0
        if service == "sqs" and QUEUE_REALISM:
            try:
                knobs = QUEUE_REALISM.get(sqs_queue_name(environ) or "", {})
                latency = float(knobs.get("latency", 0) or 0)
                behind = float(knobs.get("date_behind", 0) or 0)
            except Exception:
                log.exception("reading the queue of an SQS request failed")
        # The answer's Date header (CountingRequestHandler.date_time_string): the handler thread
        # is the one running this application.
        REQUEST.date_at = time.time() - behind if behind > 0 else None
        if latency <= 0:
            return self.app(environ, start_response)
        # Half on the way in, half on the way out (the answer is sent once this returns).
        time.sleep(latency / 2)
        out = self.app(environ, start_response)
        time.sleep(latency / 2)
        return out

    @staticmethod
    def count(environ: dict[str, Any]) -> tuple[str, str, str]:
        from urllib.parse import parse_qs

        auth = environ.get("HTTP_AUTHORIZATION", "")
        service, key = "unknown", "-"
        if "Credential=" in auth:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].strip().split("/")
            key = scope[0]
            if len(scope) >= 4:
                service = scope[3]
        action = ""
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            action = target.rsplit(".", 1)[-1]
        if not action:
            action = (parse_qs(environ.get("QUERY_STRING", "")).get("Action") or [""])[0]
        if not action and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            body = request_body(environ)
            action = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
        if not action:
            action = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '')}"
        if service == "unknown" and action.startswith(("GET /moto-api", "POST /moto-api")):
            service = "moto-api"
        agent = environ.get("HTTP_USER_AGENT", "").split(" ", 1)[0].split("/", 1)[0] or "-"
        CALLS.aws(service, action, agent, key)
        return service, action, key


def request_body(environ: dict[str, Any]) -> bytes:
    """Reads the request body and puts it back for moto."""
    body = environ.get("emulator.body")
    if body is None:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            body = environ["wsgi.input"].read(length)
        elif environ.get("wsgi.input_terminated"):  # chunked: werkzeug ends the stream
            body = environ["wsgi.input"].read()
        else:
            return b""
        environ["emulator.body"] = body
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def sqs_queue_name(environ: dict[str, Any]) -> str | None:
    """The queue an SQS request is about: QueueUrl's last part, or QueueName (JSON or query
    protocol, body or query string)."""
    from urllib.parse import parse_qs

    body = request_body(environ)
    params: dict[str, Any] = {}
    if environ.get("HTTP_X_AMZ_TARGET"):
        try:
            doc = json.loads(body or b"{}")
            params = doc if isinstance(doc, dict) else {}
        except ValueError:
            params = {}
    else:
        for raw in (environ.get("QUERY_STRING", ""), body.decode("utf-8", "replace")):
            params.update({k: v[0] for k, v in parse_qs(raw).items()})
    url = params.get("QueueUrl")
    if isinstance(url, str) and url:
        return url.rstrip("/").rsplit("/", 1)[-1]
    name = params.get("QueueName")
    return name if isinstance(name, str) else None


def throttled(start_response: Any) -> list[bytes]:
    """Auto Scaling's throttling answer: HTTP 400, query-protocol XML, Code Throttling, Message
    Rate exceeded (rendered like moto's own Auto Scaling errors)."""
    request_id = str(uuid.uuid4())
    body = (
        '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type>'
        f"<Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    start_response(
        "400 Bad Request",
        [("Content-Type", "text/xml"), ("Content-Length", str(len(body))), ("x-amzn-RequestId", request_id)],
    )
    return [body]


# ---------------------------------------------------------------------------
# Fake IMDSv2
# ---------------------------------------------------------------------------
class ImdsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, instance_id: str):
        super().__init__((host, 0), ImdsHandler)
        self.instance_id = instance_id
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.overrides: dict[str, tuple[int, str]] = {}  # path -> (status, body)
        self.tags_enabled = True
        self.fail_token = False
        self.thread = threading.Thread(target=self.serve_forever, name=f"imds-{self.server_port}", daemon=True)

    def items(self) -> dict[str, str]:
        """Current metadata items for this instance (live from moto)."""
        with LOCK:
            found = find_ec2_instance(self.instance_id)
            if found is None:
                return {}
            backend, inst = found
            region = backend.region_name
            zone = inst.placement.zone
            out: dict[str, str] = {
                "/latest/meta-data/instance-id": inst.id,
                "/latest/meta-data/placement/region": region,
                "/latest/meta-data/placement/availability-zone": zone,
                "/latest/meta-data/instance-type": inst.instance_type,
                "/latest/meta-data/ami-id": inst.image_id,
            }
            ip = None
            try:  # a terminated instance may have lost its network interface
                ip = inst.private_ip
                out["/latest/meta-data/local-ipv4"] = ip
                out["/latest/meta-data/local-hostname"] = inst.private_dns_name
                out["/latest/meta-data/hostname"] = inst.private_dns_name
            except Exception:
                pass
            out["/latest/dynamic/instance-identity/document"] = json.dumps(
                {
                    "accountId": backend.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": zone,
                    "imageId": inst.image_id,
                    "instanceId": inst.id,
                    "instanceType": inst.instance_type,
                    "pendingTime": iso_now()[:19] + "Z",
                    "privateIp": ip,
                    "region": region,
                    "version": "2017-09-30",
                },
                indent=2,
            )
            state = target_lifecycle_state(inst.id)
            if state is not None:
                out["/latest/meta-data/autoscaling/target-lifecycle-state"] = state
            if self.tags_enabled:
                tags = {t["key"]: t["value"] for t in inst.get_tags()}
                out["/latest/meta-data/tags/instance"] = "\n".join(sorted(tags))
                for k, v in tags.items():
                    out[f"/latest/meta-data/tags/instance/{k}"] = v
            return out


class ImdsHandler(BaseHTTPRequestHandler):
    server: ImdsServer
    protocol_version = "HTTP/1.1"  # keep-alive like the real IMDS
    # http.server sends a response's headers and body in two writes; on a keep-alive connection
    # Nagle's algorithm then holds the body back until the client's delayed ACK (~40 ms). The
    # real IMDS answers in well under a millisecond.
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: Any) -> None:
        if VERBOSE:
            log.info("imds %s: " + fmt, self.server.server_port, *args)

    def _send(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The instance's lastcall was stopped mid-request (a test or the bench ends it):
            # nobody is left to answer, and a traceback would only bury the output.
            self.close_connection = True

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def do_PUT(self) -> None:
        self._drain()
        path = self.path.split("?", 1)[0]
        CALLS.imds_request("PUT", path)
        if self.headers.get("X-Forwarded-For") is not None:
            return self._send(403)
        if path != "/latest/api/token":
            # Versioned token paths are refused with 403.
            return self._send(403 if path.endswith("/api/token") else 404)
        if self.server.fail_token:
            return self._send(503)
        raw = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(raw) if raw is not None else 0
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return self._send(400)
        token = secrets.token_urlsafe(42)
        with LOCK:
            now = time.monotonic()
            self.server.tokens = {t: e for t, e in self.server.tokens.items() if e > now}
            self.server.tokens[token] = now + ttl
        # aws-config's IMDS client rejects a token reply without this header.
        self._send(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def do_GET(self) -> None:
        self._drain()
        CALLS.imds_request("GET", self.path.split("?", 1)[0])
        token = self.headers.get("X-aws-ec2-metadata-token")
        with LOCK:
            expiry = self.server.tokens.get(token or "")
        if expiry is None or expiry <= time.monotonic():
            return self._send(401)
        # "/latest/meta-data/" and "/latest/meta-data" are the same item.
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        with LOCK:
            override = self.server.overrides.get(path)
        if override is not None:
            status, body = override
            return self._send(status, body if status == 200 else "")
        if not self.server.tags_enabled and path.startswith("/latest/meta-data/tags"):
            return self._send(404)
        items = self.server.items()
        if path in items:
            return self._send(200, items[path])
        if path == "/latest/meta-data":
            # Directory listing of the top-level categories present.
            names = set()
            for p in list(items) + [p for p, (s, _) in self.server.overrides.items() if s == 200]:
                if p.startswith("/latest/meta-data/"):
                    rest = p[len("/latest/meta-data/"):]
                    names.add(rest.split("/", 1)[0] + ("/" if "/" in rest else ""))
            return self._send(200, "\n".join(sorted(names)))
        self._send(404)

    def do_POST(self) -> None:
        self._drain()
        self._send(405)

    do_DELETE = do_POST


# ---------------------------------------------------------------------------
# Control server
# ---------------------------------------------------------------------------
IMDS_SERVERS: dict[int, ImdsServer] = {}
HOST = "127.0.0.1"
VERBOSE = False


FAULT_HINT = (
    "transient faults (HTTP 500/503, connection resets) are not an emulator knob: put "
    "tests/faults/proxy.py in front of the emulator (tests/emulator/README.md, \"Transient faults\")"
)


def realism_json() -> dict[str, Any]:
    return {
        "groups": REALISM,
        "instances": INSTANCE_REALISM,
        "queues": QUEUE_REALISM,
        "seed": SEED,
        "autoscaling_throttle": THROTTLE.to_json() if THROTTLE is not None else None,
    }


def _number(name: str, value: Any, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if out != out or out < lo or (hi is not None and out > hi):
        raise ValueError(f"{name}: {value!r} is out of range [{lo}, {'inf' if hi is None else hi}]")
    return out


def _throttle(value: Any) -> Throttle | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError('autoscaling_throttle: expected {"rate": calls/s, "burst": N} or null')
    unknown = [k for k in value if k not in THROTTLE_KEYS]
    if unknown:
        raise ValueError(f"autoscaling_throttle: unknown keys {unknown}; known: {list(THROTTLE_KEYS)}")
    if "rate" not in value or "burst" not in value:
        raise ValueError("autoscaling_throttle: rate and burst are required")
    keys = value.get("keys")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ValueError("autoscaling_throttle.keys: expected a list of access key ids")
    return Throttle(
        _number("autoscaling_throttle.rate", value["rate"]),
        _number("autoscaling_throttle.burst", value["burst"], lo=1),
        keys,
        bool(value.get("shared", False)),
    )


def set_realism(body: Any) -> dict[str, Any]:
    """POST /realism.  The body names at most one scope (group, instance or queue) with that
    scope's knobs, or none for the global knobs.  Everything is checked before anything is
    set; raises ValueError (-> 400) on an unknown knob or a bad value."""
    global THROTTLE
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    scopes = [k for k in ("group", "instance", "queue") if k in body]
    if len(scopes) > 1:
        raise ValueError(f"give one of group, instance or queue, not {scopes}")
    scope = scopes[0] if scopes else None
    if scope is not None and not (isinstance(body[scope], str) and body[scope]):
        raise ValueError(f"{scope}: expected a name")
    known = {"group": REALISM_KNOBS, "instance": INSTANCE_KNOBS, "queue": QUEUE_KNOBS, None: GLOBAL_KNOBS}[scope]
    knobs = {k: v for k, v in body.items() if k != scope}
    unknown = [k for k in knobs if k not in known]
    if unknown:
        where = f"{scope} knobs" if scope else "global knobs (or give group, instance or queue)"
        hint = f"; {FAULT_HINT}" if any(k in ("fault_rate", "reset_rate") for k in unknown) else ""
        raise ValueError(f"unknown {where} {unknown}; known: {list(known)}{hint}")
    if not knobs:
        raise ValueError(f"no knobs given; known: {list(known)}")
    parsed: dict[str, Any] = {}
    for k, v in knobs.items():
        if k == "receive_order":
            if v not in RECEIVE_ORDERS:
                raise ValueError(f"receive_order: expected one of {list(RECEIVE_ORDERS)}, got {v!r}")
            parsed[k] = v
        elif k == "receive_sample":
            parsed[k] = _number(k, v, 0.0, 1.0)
        elif k == "seed":
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"seed: expected an integer or null, got {v!r}")
            parsed[k] = v
        elif k == "autoscaling_throttle":
            parsed[k] = _throttle(v)
        else:
            parsed[k] = _number(k, v)
    with LOCK:
        if scope is None:
            if "seed" in parsed:
                set_seed(parsed["seed"])
            if "autoscaling_throttle" in parsed:
                THROTTLE = parsed["autoscaling_throttle"]
            out = realism_json()
            return {"seed": out["seed"], "autoscaling_throttle": out["autoscaling_throttle"]}
        table = {"group": REALISM, "instance": INSTANCE_REALISM, "queue": QUEUE_REALISM}[scope]
        table.setdefault(body[scope], {}).update(parsed)
        return dict(table[body[scope]])


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: Any) -> None:
        if VERBOSE:
            log.info("control: " + fmt, *args)

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    def _parts(self) -> list[str]:
        return [p for p in self.path.split("?", 1)[0].split("/") if p]

    def do_GET(self) -> None:
        parts = self._parts()
        if parts == ["health"]:
            return self._json(200, {"ok": True})
        if parts == ["actions"]:
            with LOCK:
                return self._json(200, [a.to_json() for a in ACTIONS.values()])
        if parts == ["calls"]:
            return self._json(200, CALLS.to_json())
        if len(parts) == 2 and parts[0] == "deleted":
            return self._json(200, DELETIONS.of(parts[1]))
        if parts == ["realism"]:
            with LOCK:
                return self._json(200, realism_json())
        if parts == ["imds"]:
            with LOCK:
                return self._json(200, [{"port": p, "instance_id": s.instance_id, "endpoint": f"http://{HOST}:{p}"} for p, s in IMDS_SERVERS.items()])
        self._json(404, {"error": f"no such resource: {self.path}"})

    def do_POST(self) -> None:
        try:
            body = self._body()
        except ValueError as exc:
            return self._json(400, {"error": f"invalid JSON: {exc}"})
        parts = self._parts()
        if parts == ["calls", "reset"]:
            CALLS.reset()
            return self._json(200, {"ok": True})
        if parts == ["realism"]:
            try:
                return self._json(200, set_realism(body))
            except ValueError as exc:
                return self._json(400, {"error": str(exc)})
        if parts == ["imds"]:
            instance_id = body.get("instance_id") if isinstance(body, dict) else None
            if not instance_id:
                return self._json(400, {"error": "instance_id is required"})
            with LOCK:
                if find_ec2_instance(instance_id) is None:
                    return self._json(404, {"error": f"unknown instance {instance_id}"})
            server = ImdsServer(HOST, instance_id)
            server.thread.start()
            with LOCK:
                IMDS_SERVERS[server.server_port] = server
            return self._json(200, {"endpoint": f"http://{HOST}:{server.server_port}", "port": server.server_port, "instance_id": instance_id})
        if len(parts) == 3 and parts[0] == "imds" and parts[2] == "override":
            with LOCK:
                server = IMDS_SERVERS.get(int(parts[1])) if parts[1].isdigit() else None
            if server is None:
                return self._json(404, {"error": f"no IMDS server on port {parts[1]}"})
            if not isinstance(body, dict):
                return self._json(400, {"error": "expected a JSON object"})
            with LOCK:
                if "tags_enabled" in body:
                    server.tags_enabled = bool(body["tags_enabled"])
                if "fail_token" in body:
                    server.fail_token = bool(body["fail_token"])
                if "path" in body:
                    path = str(body["path"])
                    if body.get("clear"):
                        server.overrides.pop(path, None)
                    else:
                        server.overrides[path] = (int(body.get("status", 200)), str(body.get("body", "")))
                return self._json(
                    200,
                    {
                        "ok": True,
                        "tags_enabled": server.tags_enabled,
                        "fail_token": server.fail_token,
                        "overrides": {p: {"status": s, "body": b} for p, (s, b) in server.overrides.items()},
                    },
                )
        self._json(404, {"error": f"no such resource: {self.path}"})

    def do_DELETE(self) -> None:
        self._body()
        parts = self._parts()
        if len(parts) == 2 and parts[0] == "imds" and parts[1].isdigit():
            with LOCK:
                server = IMDS_SERVERS.pop(int(parts[1]), None)
            if server is None:
                return self._json(404, {"error": f"no IMDS server on port {parts[1]}"})
            server.shutdown()
            server.server_close()
            return self._json(200, {"ok": True})
        self._json(404, {"error": f"no such resource: {self.path}"})


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def main() -> None:
    global HOST, VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="moto server port (0 = any free port)")
    parser.add_argument("--control-port", type=int, default=0, help="control server port (0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--no-stdin-exit",
        action="store_true",
        help="do not exit on stdin EOF (for running it by hand in the background)",
    )
    args = parser.parse_args()
    HOST, VERBOSE = args.host, args.verbose

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="emulator %(levelname)s %(name)s: %(message)s",
    )
    # werkzeug logs one line per request at INFO; keep that for --verbose.
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.ERROR)

    install_patches()
    threading.Thread(target=timeout_loop, name="lifecycle-timeouts", daemon=True).start()

    moto_server = make_server(
        args.host,
        args.port,
        CountingApp(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=CountingRequestHandler,
    )
    threading.Thread(target=moto_server.serve_forever, name="moto", daemon=True).start()
    control = ControlServer((args.host, args.control_port), ControlHandler)
    threading.Thread(target=control.serve_forever, name="control", daemon=True).start()

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not args.no_stdin_exit:
        def watch_stdin() -> None:
            # The harness keeps our stdin open; EOF means it is gone.
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            log.info("stdin closed, exiting")
            os._exit(0)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    sys.stdout.write(
        json.dumps(
            {"endpoint": f"http://{args.host}:{moto_server.server_port}", "control": f"http://{args.host}:{control.server_port}"},
            separators=(",", ":"),
        )
        + "\n"
    )
    sys.stdout.flush()

    while not stop.wait(1.0):  # a timed wait keeps signal handling prompt
        pass
    log.info("signal received, shutting down")
    for server in [moto_server, control, *IMDS_SERVERS.values()]:
        server.shutdown()
    sys.stdout.flush()
    # Skip joining request threads (an SQS long poll may hold one for 20 s).
    os._exit(0)


if __name__ == "__main__":
    main()
