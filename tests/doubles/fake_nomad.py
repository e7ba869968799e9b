#!/usr/bin/env python3
"""A fake Nomad HTTP API for lastcall's tests: the agent of one client node ("this" machine).

    fake_nomad.py [--port 0] [--bind 127.0.0.1] [--node-id UUID] [--node-name NAME]
                  [--datacenter dc1] [--region global] [--instance-id I] [--az AZ]
                  [--server-only] [--max-wait S] [--no-stdin-watch]

Serves GET /v1/agent/self, GET /v1/node/<id>, GET /v1/node/<id>/allocations and
POST|PUT /v1/node/<id>/drain with a drainer that stops allocations asynchronously, blocking
queries (index/wait), ACLs (off by default) and a /_control API. Prints one JSON line
{"url": …, "control": …} once ready; exits 0 at stdin EOF, SIGTERM or SIGINT.
See README.md (section fake_nomad.py) for the behaviour and its sources.
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ZERO_TIME = "0001-01-01T00:00:00Z"
JOB_TYPES = ("service", "batch", "system", "sysbatch")
CLIENT_STATUSES = ("pending", "running", "complete", "failed", "lost")
TERMINAL_CLIENT = ("complete", "failed", "lost")
CLIENT_DESCRIPTION = {
    "pending": "No tasks have started",
    "running": "Tasks are running",
    "complete": "All tasks have completed",
    "failed": "Failed tasks",
    "lost": "alloc is lost since its node is down",
}
TASK_STATE = {"pending": "pending", "running": "running", "complete": "dead", "failed": "dead",
              "lost": "dead"}

# Nomad's texts (command/agent/http.go, nomad/structs/errors.go, command/agent/node_endpoint.go)
MSG_PERMISSION = "Permission denied"
MSG_NODE_NOT_FOUND = "node not found"
MSG_INVALID_METHOD = "Invalid method"
MSG_EMPTY_BODY = "Request body is empty"
MSG_MIGRATING = "alloc is being migrated"              # scheduler/structs/const.go
MSG_TAINTED = "alloc not needed as node is tainted"    # system allocs on a drained node

# drainer timing (the real drainer reacts within milliseconds; these keep it observable)
MARK_DELAY = 0.05       # drain set -> allocations marked for migration
SCHED_DELAY = 0.02      # marked (DesiredTransition.Migrate) -> DesiredStatus "stop"
MIN_DRAIN = 0.2         # a drain never completes sooner than this after it was set/updated
TICK = 0.01

DEFAULT_FAULT_MESSAGES = {
    429: "Too Many Requests",
    500: "No cluster leader",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

MAX_WAIT = 10.0         # --max-wait: cap of a blocking query's wait (Nomad: 10 min)
DEFAULT_WAIT = 300.0    # Nomad's default wait (5 min), capped to MAX_WAIT here


def go_time_ns(ns):
    """A Go time.Time in UTC as encoding/json renders it (RFC 3339, trailing zeros trimmed)."""
    if ns is None:
        return ZERO_TIME
    secs, frac = divmod(int(ns), 1_000_000_000)
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        s += "." + f"{frac:09d}".rstrip("0")
    return s + "Z"


def go_time_s(secs):
    return go_time_ns(int(secs) * 1_000_000_000)


_DUR_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
              "h": 3600.0}


def parse_go_duration(s):
    """Seconds for a Go duration string ("5s", "1m30s", "250ms"); ValueError if invalid."""
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DUR_RE.match(s, pos)
        if not m:
            raise ValueError(s)
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


class GoJSONError(Exception):
    pass


def go_decode(raw):
    """Decodes a request body roughly as Go's json.Decoder.Decode does: the first JSON value
    only (trailing data is ignored), errors worded like Go's."""
    text = raw.decode("utf-8", "replace")
    stripped = text.lstrip()
    if not stripped:
        raise GoJSONError("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError as e:
        if e.pos >= len(stripped):
            raise GoJSONError("unexpected EOF")
        raise GoJSONError(f"invalid character {stripped[e.pos]!r} looking for beginning of value")
    return value


def json_type_name(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"


def ci_get(obj, name):
    """Go's encoding/json matches field names case-insensitively."""
    for k, v in obj.items():
        if k.lower() == name.lower():
            return True, v
    return False, None


def parse_drain_request(value):
    """-> (spec or None, mark_eligible, meta) as Nomad decodes api.NodeUpdateDrainRequest."""
    where = "Go value of type api.NodeUpdateDrainRequest"
    if value is None:
        return None, False, None
    if not isinstance(value, dict):
        raise GoJSONError(f"json: cannot unmarshal {json_type_name(value)} into {where}")
    spec = None
    found, raw_spec = ci_get(value, "DrainSpec")
    if found and raw_spec is not None:
        if not isinstance(raw_spec, dict):
            raise GoJSONError(f"json: cannot unmarshal {json_type_name(raw_spec)} into Go struct "
                              "field NodeUpdateDrainRequest.DrainSpec of type api.DrainSpec")
        _, dl = ci_get(raw_spec, "Deadline")
        if dl is None:
            dl = 0
        if isinstance(dl, bool) or not isinstance(dl, int):
            shown = json_type_name(dl) if not isinstance(dl, float) else f"number {dl}"
            raise GoJSONError(f"json: cannot unmarshal {shown} into Go struct field "
                              "DrainSpec.DrainSpec.Deadline of type time.Duration")
        _, ign = ci_get(raw_spec, "IgnoreSystemJobs")
        if ign is None:
            ign = False
        if not isinstance(ign, bool):
            raise GoJSONError(f"json: cannot unmarshal {json_type_name(ign)} into Go struct "
                              "field DrainSpec.DrainSpec.IgnoreSystemJobs of type bool")
        spec = {"Deadline": dl, "IgnoreSystemJobs": ign}
    _, me = ci_get(value, "MarkEligible")
    if me is None:
        me = False
    if not isinstance(me, bool):
        raise GoJSONError(f"json: cannot unmarshal {json_type_name(me)} into Go struct field "
                          "NodeUpdateDrainRequest.MarkEligible of type bool")
    _, meta = ci_get(value, "Meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise GoJSONError(f"json: cannot unmarshal {json_type_name(meta)} into Go struct "
                              "field NodeUpdateDrainRequest.Meta of type map[string]string")
        for v in meta.values():
            if not isinstance(v, str):
                raise GoJSONError(f"json: cannot unmarshal {json_type_name(v)} into Go struct "
                                  "field NodeUpdateDrainRequest.Meta of type string")
    return spec, me, meta


# --------------------------------------------------------------------------------------------
# state

class State:
    def __init__(self):
        self.cv = threading.Condition(threading.Lock())
        self.index = 9
        self.opts = None
        self.faults = []
        self.requests = []
        self.drain_requests = []

    def bump(self):
        self.index += 1
        return self.index

    def reset(self, node_id=None):
        o = self.opts
        self.client = not o.server_only
        self.acl_enabled = False
        self.tokens = {}            # secret -> {"accessor", "policies": set, "management"}
        self.anonymous_policies = set()
        self.allocs = {}            # id -> internal alloc (insertion order)
        self.jobs = {}              # (namespace, job id) -> {"type", "create_index", ...}
        self.faults = []
        self.requests = []
        self.drain_requests = []
        now_ns = time.time_ns()
        idx = self.bump()
        self.allocs_table_index = idx
        self.node = {
            "id": node_id or str(uuid.uuid4()),
            "name": o.node_name,
            "datacenter": o.datacenter,
            "status": "ready",
            "eligibility": "eligible",
            "drain": None,           # internal drain strategy, see api_drain_strategy
            "last_drain": None,
            "events": [{"Message": "Node registered", "Subsystem": "Cluster", "Details": None,
                        "Timestamp": go_time_ns(now_ns), "CreateIndex": idx}],
            "create_index": idx,
            "modify_index": idx,
            "status_updated_at": now_ns // 1_000_000_000,
            "last_alloc_update_index": 0,
        }
        self.cv.notify_all()

    # ---- rendering ----------------------------------------------------------------------
    def api_drain_strategy(self):
        d = self.node["drain"]
        if d is None:
            return None
        # DrainSpec is embedded in structs.DrainStrategy, so its fields are inlined
        return {"Deadline": d["deadline_ns"], "IgnoreSystemJobs": d["ignore_system"],
                "ForceDeadline": go_time_ns(d["force_deadline_ns"]),
                "StartedAt": go_time_ns(d["started_ns"])}

    def api_node(self):
        n, o = self.node, self.opts
        attrs = {
            "cpu.arch": "amd64",
            "kernel.name": "linux",
            "os.name": "debian",
            "nomad.version": o.version,
            "unique.hostname": n["name"],
        }
        if o.instance_id:
            attrs["unique.platform.aws.instance-id"] = o.instance_id
            attrs["platform.aws.instance-type"] = "t3.medium"
        if o.az:
            attrs["platform.aws.placement.availability-zone"] = o.az
        ld = n["last_drain"]
        return {
            "ID": n["id"],
            "SecretID": "",
            "Datacenter": n["datacenter"],
            "Name": n["name"],
            "CgroupParent": "",
            "HTTPAddr": self.http_addr,
            "TLSEnabled": False,
            "Attributes": attrs,
            "NodeResources": None,
            "ReservedResources": None,
            "Links": {},
            "Meta": {},
            "NodeClass": "",
            "NodePool": "default",
            "ComputedClass": "v1:1234567890123456789",
            "DrainStrategy": self.api_drain_strategy(),
            "SchedulingEligibility": n["eligibility"],
            "Status": n["status"],
            "StatusDescription": "",
            "IdentitySigningKeyID": "",
            "StatusUpdatedAt": n["status_updated_at"],
            "Events": list(n["events"]),
            "Drivers": {"docker": {"Attributes": {"driver.docker": "true"}, "Detected": True,
                                   "HealthDescription": "Healthy", "Healthy": True,
                                   "UpdateTime": n["events"][0]["Timestamp"]}},
            "CSIControllerPlugins": None,
            "CSINodePlugins": None,
            "HostVolumes": None,
            "GCVolumesOnNodeGC": False,
            "HostNetworks": None,
            "LastDrain": None if ld is None else {
                "StartedAt": go_time_s(ld["started"]), "UpdatedAt": go_time_s(ld["updated"]),
                "Status": ld["status"], "AccessorID": ld["accessor"], "Meta": ld["meta"]},
            "NodeMaxAllocs": 0,
            "LastMissedHeartbeatIndex": 0,
            "LastAllocUpdateIndex": n["last_alloc_update_index"],
            "CreateIndex": n["create_index"],
            "ModifyIndex": n["modify_index"],
            # added back to every encoded Node by nomad/structs/extensions.go (nodeExt)
            "Drain": n["drain"] is not None,
        }

    def api_job(self, a):
        j = self.jobs[(a["namespace"], a["job"])]
        migrate = None
        if j["type"] == "service":  # Job.Canonicalize: service groups get DefaultMigrateStrategy
            migrate = {"MaxParallel": 1, "HealthCheck": "checks",
                       "MinHealthyTime": 10_000_000_000, "HealthyDeadline": 300_000_000_000}
        groups = [{"Name": g, "Count": c, "Migrate": migrate, "Constraints": None,
                   "Tasks": [{"Name": g, "Driver": "docker", "Config": {"image": "busybox:1"},
                              "KillTimeout": 5_000_000_000, "Leader": False}]}
                  for g, c in sorted(j["groups"].items())]
        return {
            "Region": self.opts.region,
            "Namespace": a["namespace"],
            "ID": a["job"],
            "ParentID": "",
            "Name": a["job"],
            "Type": j["type"],
            "Priority": 50,
            "AllAtOnce": False,
            "Datacenters": ["*"],
            "NodePool": "default",
            "Constraints": None,
            "TaskGroups": groups,
            "Meta": None,
            "Stop": False,
            "Status": "running",
            "StatusDescription": "",
            "Stable": False,
            "Version": 0,
            "SubmitTime": j["submit_ns"],
            "CreateIndex": j["create_index"],
            "ModifyIndex": j["create_index"],
            "JobModifyIndex": j["create_index"],
        }

    def api_alloc(self, a):
        cs = a["client_status"]
        dt = {"Migrate": a["migrate"], "Reschedule": None, "ForceReschedule": None,
              "NoShutdownDelay": None, "MigrateDisablePlacement": a["disable_placement"]}
        task_state = {"State": TASK_STATE[cs], "Failed": cs == "failed", "Restarts": 0,
                      "LastRestart": ZERO_TIME,
                      "StartedAt": go_time_ns(a["started_ns"]) if a["started_ns"] else ZERO_TIME,
                      "FinishedAt": go_time_ns(a["finished_ns"]) if a["finished_ns"] else ZERO_TIME,
                      "Events": []}
        return {
            "ID": a["id"],
            "Namespace": a["namespace"],
            "EvalID": a["eval_id"],
            "Name": a["name"],
            "NodeID": self.node["id"],
            "NodeName": self.node["name"],
            "JobID": a["job"],
            "Job": self.api_job(a),
            "TaskGroup": a["group"],
            "Resources": None,
            "SharedResources": None,
            "TaskResources": None,
            "AllocatedResources": None,
            "Metrics": None,
            "DesiredStatus": a["desired_status"],
            "DesiredDescription": a["desired_description"],
            "DesiredTransition": dt,
            "ClientStatus": cs,
            "ClientDescription": CLIENT_DESCRIPTION[cs],
            "TaskStates": {a["group"]: task_state},
            "AllocStates": None,
            "PreviousAllocation": "",
            "NextAllocation": "",
            "DeploymentID": "",
            "DeploymentStatus": None,
            "RescheduleTracker": None,
            "NetworkStatus": None,
            "FollowupEvalID": "",
            "PreemptedAllocations": None,
            "PreemptedByAllocation": "",
            "SigningKeyID": "",
            "CreateIndex": a["create_index"],
            "ModifyIndex": a["modify_index"],
            "AllocModifyIndex": a["create_index"],
            "CreateTime": a["create_ns"],
            "ModifyTime": a["modify_ns"],
        }

    def allocs_index(self):
        if self.allocs:
            return max(a["modify_index"] for a in self.allocs.values())
        return max(self.allocs_table_index, 1)

    # ---- mutations (cv held) ------------------------------------------------------------
    def touch_node(self):
        self.node["modify_index"] = self.bump()
        return self.node["modify_index"]

    def touch_alloc(self, a):
        a["modify_index"] = self.bump()
        a["modify_ns"] = time.time_ns()
        self.allocs_table_index = a["modify_index"]
        self.node["last_alloc_update_index"] = a["modify_index"]

    def add_event(self, message, details=None, index=None):
        ev = {"Message": message, "Subsystem": "Drain", "Details": details,
              "Timestamp": go_time_ns(time.time_ns()), "CreateIndex": index or self.index}
        self.node["events"] = (self.node["events"] + [ev])[-10:]

    def set_client_status(self, a, status):
        a["client_status"] = status
        a["stop_at"] = a["finish_at"] = None
        if status in TERMINAL_CLIENT:
            a["finished_ns"] = time.time_ns()
        self.touch_alloc(a)

    def update_drain(self, spec, mark_eligible, meta, accessor):
        """Node.UpdateDrain + StateStore.updateNodeDrainImpl. Returns the response object."""
        n = self.node
        old = n["drain"]
        now_ns = time.time_ns()
        now_s = now_ns // 1_000_000_000
        mono = time.monotonic()
        was_ineligible = n["eligibility"] == "ineligible"
        idx = self.bump()
        if spec is not None:
            dl = spec["Deadline"]
            n["drain"] = {
                "deadline_ns": dl,
                "ignore_system": spec["IgnoreSystemJobs"],
                "force_deadline_ns": now_ns + dl if dl > 0 else None,
                "started_ns": old["started_ns"] if old else now_ns,
                "set_mono": mono,
                "deadline_mono": mono + dl / 1e9 if dl > 0 else None,
                "force": dl < 0,
            }
            n["eligibility"] = "ineligible"
        else:
            n["drain"] = None
            if mark_eligible:
                n["eligibility"] = "eligible"
            # the jobs' own timers (batch work finishing) belong to the drain in this double
            for a in self.allocs.values():
                a["finish_at"] = None
        if old is None and spec is not None:
            self.add_event("Node drain strategy set", index=idx)
        elif old is not None and spec is not None:
            self.add_event("Node drain strategy updated", index=idx)
        elif old is not None and spec is None:
            self.add_event("Node drain disabled", index=idx)
        if not (old is None and spec is None):
            if old is None:
                n["last_drain"] = {"started": now_s, "meta": meta, "accessor": ""}
            elif n["last_drain"] is None:
                n["last_drain"] = {"started": old["started_ns"] // 1_000_000_000, "meta": meta,
                                   "accessor": ""}
            ld = n["last_drain"]
            ld["updated"] = now_s
            if meta:
                ld["meta"] = meta
            if accessor:
                ld["accessor"] = accessor
            ld["status"] = "draining" if spec is not None else "canceled"
        n["status_updated_at"] = now_s
        n["modify_index"] = idx
        eval_ids, eval_index = None, 0
        if was_ineligible and mark_eligible and spec is None:
            jobs = sorted({(a["namespace"], a["job"]) for a in self.allocs.values()})
            if jobs:
                eval_ids = [str(uuid.uuid4()) for _ in jobs]
                eval_index = self.bump()
        self.cv.notify_all()
        return {"EvalCreateIndex": eval_index, "EvalIDs": eval_ids, "Index": idx,
                "NodeModifyIndex": idx}

    def complete_drain(self, deadlined):
        n = self.node
        n["drain"] = None
        idx = self.touch_node()
        now_s = int(time.time())
        n["status_updated_at"] = now_s
        ld = n["last_drain"]
        ld["updated"] = now_s
        ld["status"] = "complete"
        self.add_event("Node drain complete",
                       {"deadline_reached": "true"} if deadlined else None, idx)

    def mark_for_migration(self, a, now):
        """The drainer sets DesiredTransition.Migrate; the scheduler then stops the alloc."""
        if a["migrate"] or a["desired_status"] != "run" or a["client_status"] in TERMINAL_CLIENT:
            return
        a["migrate"] = True
        if a["type"] == "batch":
            a["disable_placement"] = True
        a["finish_at"] = None
        a["desire_stop_at"] = now + SCHED_DELAY
        self.touch_alloc(a)

    def step(self):
        """One drainer/scheduler/client tick; returns True if anything changed."""
        now = time.monotonic()
        before = self.index
        d = self.node["drain"]
        if d is not None and now >= d["set_mono"] + MARK_DELAY:
            allocs = list(self.allocs.values())
            deadlined = d["force"] or (d["deadline_mono"] is not None and now >= d["deadline_mono"])
            if deadlined:
                # handleDeadlinedNodes: force-stop what remains, then mark the drain complete
                for a in allocs:
                    if a["type"] == "system" and d["ignore_system"]:
                        continue
                    self.mark_for_migration(a, now)
                if now >= d["set_mono"] + MIN_DRAIN:
                    self.complete_drain(deadlined=True)
            else:
                for a in allocs:
                    if a["type"] == "system" or a["stuck"] or a["client_status"] in TERMINAL_CLIENT:
                        continue
                    if a["type"] == "service":
                        self.mark_for_migration(a, now)
                    elif a["finish_at"] is None and a["desired_status"] == "run":
                        # batch/sysbatch allocs are not migrated: they run to completion
                        a["finish_at"] = now + a["stop_seconds"]
                done = all(a["client_status"] in TERMINAL_CLIENT
                           for a in allocs if a["type"] != "system")
                if done and now >= d["set_mono"] + MIN_DRAIN:
                    # handleMigratedAllocs: stop system allocs, and mark the drain complete
                    # at once (without waiting for the system allocs to stop)
                    if not d["ignore_system"]:
                        for a in allocs:
                            if a["type"] == "system":
                                self.mark_for_migration(a, now)
                    self.complete_drain(deadlined=False)
        for a in self.allocs.values():
            if a["desire_stop_at"] is not None and now >= a["desire_stop_at"]:
                a["desire_stop_at"] = None
                a["desired_status"] = "stop"
                a["desired_description"] = MSG_TAINTED if a["type"] == "system" else MSG_MIGRATING
                if a["client_status"] not in TERMINAL_CLIENT:
                    a["stop_at"] = now + a["stop_seconds"]
                self.touch_alloc(a)
            if a["stop_at"] is not None and now >= a["stop_at"]:
                self.set_client_status(a, "complete")
            if a["finish_at"] is not None and now >= a["finish_at"]:
                self.set_client_status(a, "complete")
        return self.index != before


STATE = State()


def drainer_loop():
    while True:
        time.sleep(TICK)
        with STATE.cv:
            if STATE.step():
                STATE.cv.notify_all()


# --------------------------------------------------------------------------------------------
# HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-nomad"

    def log_message(self, *a):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data, True
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(n) if n > 0 else b""), n > 0

    def _send_json(self, code, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        return code

    def _send_text(self, code, text, headers=None):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        return code

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method):
        u = urllib.parse.urlsplit(self.path)
        raw, has_body = self._read_body()
        if u.path == "/_control" or u.path.startswith("/_control/"):
            return self._control(method, u, raw)
        return self._api(method, u, raw, has_body)

    # --- control API (no auth) ----------------------------------------------------------------
    def _control(self, method, u, raw):
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._send_json(400, {"error": "body is not JSON"})
        p = u.path
        bad = lambda msg: self._send_json(400, {"error": msg})  # noqa: E731
        with STATE.cv:
            if method == "POST" and p == "/_control/allocs":
                job = body.get("job")
                typ = body.get("type", "service")
                cs = body.get("client_status", "running")
                ns = body.get("namespace", "default")
                if not isinstance(job, str) or not job or typ not in JOB_TYPES \
                        or cs not in CLIENT_STATUSES:
                    return bad("job (string) required; type one of " + ", ".join(JOB_TYPES)
                               + "; client_status one of " + ", ".join(CLIENT_STATUSES))
                key = (ns, job)
                if key in STATE.jobs and STATE.jobs[key]["type"] != typ:
                    return bad(f"job {job} already exists with type {STATE.jobs[key]['type']}")
                group = body.get("task_group", job)
                if key not in STATE.jobs:
                    STATE.jobs[key] = {"type": typ, "create_index": STATE.bump(),
                                       "submit_ns": time.time_ns(), "groups": {}}
                j = STATE.jobs[key]
                i = j["groups"].get(group, 0)
                j["groups"][group] = i + 1
                now_ns = time.time_ns()
                a = {
                    "id": str(uuid.uuid4()), "namespace": ns, "eval_id": str(uuid.uuid4()),
                    "name": f"{job}.{group}[{i}]", "job": job, "type": typ, "group": group,
                    "stuck": bool(body.get("stuck", False)),
                    "stop_seconds": float(body.get("stop_seconds", 0.5)),
                    "client_status": cs, "desired_status": "run", "desired_description": "",
                    "migrate": None, "disable_placement": None,
                    "desire_stop_at": None, "stop_at": None, "finish_at": None,
                    "create_ns": now_ns, "modify_ns": now_ns,
                    "started_ns": now_ns if cs != "pending" else None,
                    "finished_ns": now_ns if cs in TERMINAL_CLIENT else None,
                }
                a["create_index"] = a["modify_index"] = STATE.bump()
                STATE.allocs_table_index = a["create_index"]
                STATE.node["last_alloc_update_index"] = a["create_index"]
                STATE.allocs[a["id"]] = a
                STATE.cv.notify_all()
                return self._send_json(200, {"id": a["id"], "name": a["name"]})
            if method == "POST" and p.startswith("/_control/allocs/"):
                a = STATE.allocs.get(p[len("/_control/allocs/"):])
                if a is None:
                    return self._send_json(404, {"error": "no such allocation"})
                if "client_status" in body:
                    if body["client_status"] not in CLIENT_STATUSES:
                        return bad("client_status one of " + ", ".join(CLIENT_STATUSES))
                    STATE.set_client_status(a, body["client_status"])
                if "stuck" in body:
                    a["stuck"] = bool(body["stuck"])
                if "stop_seconds" in body:
                    a["stop_seconds"] = float(body["stop_seconds"])
                STATE.cv.notify_all()
                return self._send_json(200, STATE.api_alloc(a))
            if method == "DELETE" and p == "/_control/allocs":
                STATE.allocs.clear()
                STATE.jobs.clear()
                STATE.allocs_table_index = STATE.bump()
                STATE.cv.notify_all()
                return self._send_json(200, {"ok": True})
            if method == "GET" and p == "/_control/state":
                return self._send_json(200, {
                    "index": STATE.index,
                    "client": STATE.client,
                    "acl_enabled": STATE.acl_enabled,
                    "node": STATE.api_node(),
                    "allocations": [STATE.api_alloc(a) for a in STATE.allocs.values()],
                    "drain_request_count": len(STATE.drain_requests),
                    "drain_requests": STATE.drain_requests,
                })
            if method == "POST" and p == "/_control/node":
                out = {"ok": True}
                if "client" in body:
                    STATE.client = bool(body["client"])
                if "status" in body:
                    STATE.node["status"] = str(body["status"])
                    STATE.touch_node()
                if "eligibility" in body:
                    if body["eligibility"] not in ("eligible", "ineligible"):
                        return bad("eligibility: eligible or ineligible")
                    STATE.node["eligibility"] = body["eligibility"]
                    STATE.touch_node()
                if "drain" in body:
                    d = body["drain"]
                    try:
                        spec, _, _ = parse_drain_request({"DrainSpec": d})
                    except GoJSONError as e:
                        return bad(str(e))
                    meta = body.get("meta")
                    out = STATE.update_drain(spec, bool(body.get("mark_eligible", False)), meta,
                                             body.get("accessor", "client:" + STATE.node["id"]))
                STATE.cv.notify_all()
                return self._send_json(200, out)
            if method == "POST" and p == "/_control/acl":
                if "enabled" in body:
                    STATE.acl_enabled = bool(body["enabled"])
                if "tokens" in body:
                    toks = {}
                    for t in body["tokens"] or []:
                        if not isinstance(t, dict) or not isinstance(t.get("secret"), str) \
                                or not t["secret"]:
                            return bad("each token needs a non-empty secret")
                        toks[t["secret"]] = {
                            "accessor": t.get("accessor") or str(uuid.uuid4()),
                            "policies": set(t.get("policies") or []),
                            "management": t.get("type") == "management",
                        }
                    STATE.tokens = toks
                if "anonymous_policies" in body:
                    STATE.anonymous_policies = set(body["anonymous_policies"] or [])
                return self._send_json(200, {"ok": True, "enabled": STATE.acl_enabled,
                                             "tokens": [{"accessor": t["accessor"],
                                                         "policies": sorted(t["policies"]),
                                                         "management": t["management"]}
                                                        for t in STATE.tokens.values()]})
            if method == "POST" and p == "/_control/faults":
                prefix = body.get("path_prefix")
                status = body.get("status")
                delay = float(body.get("delay_seconds", 0))
                if not isinstance(prefix, str) or (status is None and delay <= 0):
                    return bad("path_prefix and status (or delay_seconds) required")
                STATE.faults.append({"path_prefix": prefix, "method": body.get("method"),
                                     "status": status, "count": int(body.get("count", 1)),
                                     "delay_seconds": delay, "message": body.get("message")})
                return self._send_json(200, {"ok": True})
            if method == "GET" and p == "/_control/faults":
                return self._send_json(200, STATE.faults)
            if method == "DELETE" and p == "/_control/faults":
                STATE.faults.clear()
                return self._send_json(200, {"ok": True})
            if method == "GET" and p == "/_control/requests":
                return self._send_json(200, STATE.requests)
            if method == "DELETE" and p == "/_control/requests":
                STATE.requests.clear()
                STATE.drain_requests.clear()
                return self._send_json(200, {"ok": True})
            if method == "POST" and p == "/_control/reset":
                STATE.reset()
                return self._send_json(200, {"ok": True, "node_id": STATE.node["id"]})
        return self._send_json(404, {"error": "unknown control endpoint"})

    # --- the Nomad API ------------------------------------------------------------------------
    def _token(self):
        """Like HTTPServer.parseToken: X-Nomad-Token, else `Authorization: Bearer …`."""
        t = (self.headers.get("X-Nomad-Token") or "").strip()
        if t:
            return t, "X-Nomad-Token"
        auth = self.headers.get("Authorization") or ""
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            value = " ".join(parts[1:]).strip()
            tok = value.split(" ")[0].strip() if value else ""
            if tok:
                return tok, "Authorization"
        return None, None

    def _api(self, method, u, raw, has_body):
        token, token_header = self._token()
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = None
        rec = {"method": method, "path": u.path, "query": u.query,
               "token_present": token is not None, "token_header": token_header,
               "content_type": self.headers.get("Content-Type"), "body": text, "json": parsed,
               "status": None, "time": time.time()}
        drain_rec = None
        parts = u.path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v1", "node"] and parts[4] == "drain" \
                and method in ("POST", "PUT"):
            drain_rec = {"method": method, "path": u.path, "node_id": parts[3], "body": text,
                         "json": parsed, "token_present": token is not None, "status": None,
                         "time": rec["time"]}
        with STATE.cv:
            STATE.requests.append(rec)
            if drain_rec is not None:
                STATE.drain_requests.append(drain_rec)
            fault = None
            for f in STATE.faults:
                if f["count"] > 0 and u.path.startswith(f["path_prefix"]) and \
                        (f["method"] is None or f["method"].upper() == method):
                    f["count"] -= 1
                    fault = dict(f)
                    break
            STATE.faults = [f for f in STATE.faults if f["count"] > 0]
        if fault is not None:
            if fault["delay_seconds"] > 0:
                time.sleep(fault["delay_seconds"])
            if fault["status"] is not None:
                st = int(fault["status"])
                headers = {"Retry-After": "1"} if st == 429 else None
                msg = fault["message"] or DEFAULT_FAULT_MESSAGES.get(st, f"Error {st}")
                rec["status"] = self._send_text(st, msg, headers)
                if drain_rec is not None:
                    drain_rec["status"] = rec["status"]
                return
        rec["status"] = self._route(method, u, raw, has_body, token)
        if drain_rec is not None:
            drain_rec["status"] = rec["status"]

    def _allowed(self, token, cap):
        """(ok, acl entry or None). cap is e.g. 'node:read'; X:write implies X:read."""
        if not STATE.acl_enabled:
            return True, None
        if token is None:
            pol = STATE.anonymous_policies
            ent = None
        else:
            ent = STATE.tokens.get(token)
            if ent is None:
                return False, None
            if ent["management"]:
                return True, ent
            pol = ent["policies"]
        area, _, level = cap.partition(":")
        ok = cap in pol or (level == "read" and f"{area}:write" in pol)
        return ok, ent

    @staticmethod
    def _can_read_job(token):
        if not STATE.acl_enabled:
            return True
        ent = STATE.tokens.get(token) if token else None
        if ent and ent["management"]:
            return True
        pol = ent["policies"] if ent else STATE.anonymous_policies
        return bool(pol & {"namespace:read-job", "namespace:read", "namespace:write"})

    def _query_headers(self, index):
        return {"X-Nomad-Index": str(index), "X-Nomad-KnownLeader": "true",
                "X-Nomad-LastContact": "0"}

    def _block(self, q, index_fn):
        """Blocking query: returns None to go on, or the status already sent (400)."""
        wait = DEFAULT_WAIT
        if q.get("wait"):
            try:
                wait = parse_go_duration(q["wait"][0])
            except ValueError:
                return self._send_text(400, "Invalid wait time")
        min_index = 0
        if q.get("index"):
            try:
                min_index = int(q["index"][0])
                if min_index < 0:
                    raise ValueError
            except ValueError:
                return self._send_text(400, "Invalid index")
        if min_index > 0:
            end = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
            while index_fn() <= min_index:
                rem = end - time.monotonic()
                if rem <= 0:
                    break
                STATE.cv.wait(rem)
        return None

    def _route(self, method, u, raw, has_body, token):
        p = u.path
        q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        with STATE.cv:
            if p == "/v1/agent/self":
                if method != "GET":
                    return self._send_text(405, MSG_INVALID_METHOD)
                ok, _ = self._allowed(token, "agent:read")
                if not ok:
                    return self._send_text(403, MSG_PERMISSION)
                return self._send_json(200, self._agent_self())
            if not p.startswith("/v1/node/") or len(p) == len("/v1/node/"):
                return self._send_text(404, "")
            rest = p[len("/v1/node/"):]
            if rest.endswith("/allocations"):
                node_id = rest[:-len("/allocations")]
                if method != "GET":
                    return self._send_text(405, MSG_INVALID_METHOD)
                ok, _ = self._allowed(token, "node:read")
                if not ok:
                    return self._send_text(403, MSG_PERMISSION)
                sent = self._block(q, STATE.allocs_index)
                if sent is not None:
                    return sent
                out = []
                if node_id == STATE.node["id"] and self._can_read_job(token):
                    out = [STATE.api_alloc(a) for a in STATE.allocs.values()]
                return self._send_json(200, out, self._query_headers(STATE.allocs_index()))
            if rest.endswith("/drain"):
                node_id = rest[:-len("/drain")]
                if method not in ("PUT", "POST"):
                    return self._send_text(405, MSG_INVALID_METHOD)
                if not has_body:
                    return self._send_text(400, MSG_EMPTY_BODY)
                try:
                    spec, mark_eligible, meta = parse_drain_request(go_decode(raw))
                except GoJSONError as e:
                    return self._send_text(400, str(e))
                ok, ent = self._allowed(token, "node:write")
                if not ok:
                    return self._send_text(403, MSG_PERMISSION)
                if node_id != STATE.node["id"]:
                    return self._send_text(500, MSG_NODE_NOT_FOUND)
                accessor = "token:" + (ent["accessor"] if ent else "acls-disabled")
                out = STATE.update_drain(spec, mark_eligible, meta, accessor)
                return self._send_json(200, out, {"X-Nomad-Index": str(out["Index"])})
            for suffix in ("/evaluate", "/eligibility", "/purge"):
                if rest.endswith(suffix):
                    return self._send_text(404, "not implemented by fake_nomad.py")
            # nodeQuery
            if method != "GET":
                return self._send_text(405, MSG_INVALID_METHOD)
            ok, _ = self._allowed(token, "node:read")
            if not ok:
                return self._send_text(403, MSG_PERMISSION)

            def node_index():
                # the node's ModifyIndex; for an unknown id the nodes table's index, which is
                # the same number here as there is one node
                return STATE.node["modify_index"]
            sent = self._block(q, node_index)
            if sent is not None:
                return sent
            if rest != STATE.node["id"]:
                return self._send_text(404, MSG_NODE_NOT_FOUND, self._query_headers(node_index()))
            return self._send_json(200, STATE.api_node(), self._query_headers(node_index()))

    def _agent_self(self):
        o = STATE.opts
        n = STATE.node
        server = not STATE.client or o.server_only
        config = {
            "Region": o.region,
            "Datacenter": o.datacenter,
            "NodeName": n["name"],
            "DataDir": "/opt/nomad/data",
            "LogLevel": "INFO",
            "BindAddr": "0.0.0.0",
            "Ports": {"HTTP": 4646, "RPC": 4647, "Serf": 4648},
            "Client": {"Enabled": STATE.client, "NodeClass": "", "Meta": {},
                       "Servers": ["10.0.0.10:4647"]},
            "Server": {"Enabled": server, "BootstrapExpect": 1 if server else 0},
            "ACL": {"Enabled": STATE.acl_enabled, "ReplicationToken": ""},
            "Version": {"Revision": "0123456789abcdef", "Version": o.version,
                        "VersionPrerelease": "", "VersionMetadata": ""},
        }
        if server:
            member = {"Name": f"{n['name']}.{o.region}", "Addr": "127.0.0.1", "Port": 4648,
                      "Tags": {"role": "nomad", "region": o.region, "dc": o.datacenter,
                               "build": o.version, "port": "4647"},
                      "Status": "alive", "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                      "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}
        else:
            # a client-only agent has no serf member: the zero value
            member = {"Name": "", "Addr": None, "Port": 0, "Tags": None, "Status": "",
                      "ProtocolMin": 0, "ProtocolMax": 0, "ProtocolCur": 0,
                      "DelegateMin": 0, "DelegateMax": 0, "DelegateCur": 0}
        stats = {"runtime": {"arch": "amd64", "cpu_count": "2", "goroutines": "80",
                             "kernel.name": "linux", "max_procs": "2", "version": "go1.24.4"}}
        if server:
            stats["nomad"] = {"server": "true", "leader": "true", "bootstrap": "false",
                              "known_regions": "1", "leader_addr": "127.0.0.1:4647"}
            stats["raft"] = {"state": "Leader", "applied_index": str(STATE.index)}
            stats["serf"] = {"members": "1", "failed": "0", "left": "0"}
        if STATE.client:
            live = sum(1 for a in STATE.allocs.values()
                       if a["client_status"] not in TERMINAL_CLIENT)
            stats["client"] = {"node_id": n["id"], "known_servers": "10.0.0.10:4647",
                               "num_allocations": str(live), "last_heartbeat": "4.123456789s",
                               "heartbeat_ttl": "17.79568937s"}
        return {"config": config, "member": member, "stats": stats}


def main():
    global MAX_WAIT
    ap = argparse.ArgumentParser(description="fake Nomad agent API (see README.md)")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--node-id", help="the node's ID (default: a random UUID)")
    ap.add_argument("--node-name", default="ip-10-0-1-23")
    ap.add_argument("--datacenter", default="dc1")
    ap.add_argument("--region", default="global")
    ap.add_argument("--version", default="1.10.5", help="Nomad version reported")
    ap.add_argument("--instance-id", help="adds unique.platform.aws.instance-id to the node")
    ap.add_argument("--az", help="adds platform.aws.placement.availability-zone to the node")
    ap.add_argument("--server-only", action="store_true",
                    help="agent/self answers as a server-only agent (no stats.client)")
    ap.add_argument("--max-wait", type=float, default=MAX_WAIT,
                    help="cap on a blocking query's wait, seconds (Nomad: 600)")
    ap.add_argument("--no-stdin-watch", action="store_true",
                    help="do not exit at stdin EOF (for running it by hand)")
    args = ap.parse_args()
    MAX_WAIT = args.max_wait

    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGINT, lambda *a: os._exit(0))

    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    base = f"http://{args.bind}:{port}"
    STATE.opts = args
    STATE.http_addr = f"{args.bind}:{port}"
    with STATE.cv:
        STATE.reset(args.node_id)
    threading.Thread(target=drainer_loop, daemon=True).start()

    if not args.no_stdin_watch:
        def watch_stdin():
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except Exception:
                pass
            os._exit(0)
        threading.Thread(target=watch_stdin, daemon=True).start()

    # ready line last: once it is read, the signal handlers and the stdin watch are in place
    print(json.dumps({"url": base, "control": base + "/_control"}), flush=True)
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
