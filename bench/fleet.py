#!/usr/bin/env python3
"""Fleet behaviour: N simulated instances, each a real `lastcall run` process with its own fake
IMDSv2 (from the emulator's control API), its own state directory and its own access key id,
all on one group; M = 10% of them terminated at once (M TerminateInstanceInAutoScalingGroup calls
issued concurrently). Per N, and per mode:

  sqs       one shared queue (the hook's target); lastcall long-polls it
  imds      no queue; lastcall polls its target-lifecycle-state every 2 s
  both      the shared queue and the target-lifecycle-state poll, both in each lastcall: the
            termination starts from whichever comes first, and the queue's message is deleted
            when its owner receives it
  baseline  bench/baseline/asg-drain.sh in a tight loop on each instance, one shared queue with
            the default visibility timeout (30 s); several independent fleets at once, each with
            its own group and queue, to get several terminations within the time cap

Measured: the time from the first terminate call until all M actions are completed (and each
one's latency), AWS calls per termination by action (the emulator's counter, lastcall's calls
only), messages received by the wrong instance (lastcall's JSON logs: "message for another
instance" and, at debug, "another instance's message again"; the baseline's "not us" lines), and
AWS calls and IMDS requests while the fleet is idle. After each round the group is scaled back to
N and the new instances get their own lastcall, so every round starts from N.

Mass departure (issue 14): `--fraction 0.5` or `--fraction 1.0` terminates half or all of the group
at once (an instance refresh, a mass scale-in: too few staying instances, or none, to step out of
the queue's way). `--realistic` turns on the emulator's realism knobs (REALISTIC_GROUP and
REALISTIC_QUEUE below; tests/emulator/README.md, "Realism knobs") for each group and queue; each
termination is then also timed from the moment its state became visible: the action's
`started_at` (GET /actions, the instant the emulator began it) plus the group's describe_lag,
when DescribeAutoScalingInstances starts to show Terminating:Wait. `--name` names the JSON file.

Usage: fleet.py PATH_TO_LASTCALL [--sizes 10,50,100] [--rounds 3] [--idle 60] [--modes sqs,imds,both,baseline]
                [--baseline-n 10] [--baseline-fleets 3] [--baseline-cap 600] [--fraction 0.1]
                [--realistic] [--name fleet] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FOREIGN_AGAIN, FOREIGN_FIRST, STEPPED_ASIDE, Baseline, Emulator, Lastcall, aws_env, by_action, cleanup, count, cpu_seconds,
    imds_requests, lastcall_config, log, parse_iso, summary, wait_for, workdir, write_result,
)

# The knobs' realistic settings (--realistic), per group; AWS documents none of these figures
# (tests/emulator/README.md, "Realism knobs", cites what it does say). All four are 1 s, so the
# notification arrives, DescribeAutoScalingInstances shows Terminating:Wait, IMDS says Terminated
# and CompleteLifecycleAction starts to work at the same moment, 1 s after the action began.
REALISTIC_GROUP = {
    # Auto Scaling sends the notification "while the instance is in a wait state", no promise of
    # when; an SNS/EventBridge-free hook straight to SQS: about a second.
    "notification_delay": 1.0,
    # Eventual consistency of the Auto Scaling API; no window documented.
    "describe_lag": 1.0,
    # IMDS target-lifecycle-state: no delay documented; AWS's own tutorial polls every 5 s.
    "imds_target_lag": 1.0,
    # "No active Lifecycle Action found" right after the wait began (PrairieLearn PR #15586:
    # retrying every 5 s fixed it, so the window is shorter than that).
    "no_action_window": 1.0,
}
# Per queue: a long poll may return a subset of the visible messages, standard queues are
# best-effort oldest first, and every call is a network round trip (tens of ms; 20 ms is the
# low end, in-region). receive_max stays off: the API's own 10 per receive applies.
REALISTIC_QUEUE = {"receive_sample": 0.5, "receive_order": "oldest_first_jitter", "latency": 0.02}
REALISTIC_SEED = 14


def terminate_at_once(emu: Emulator, victims: list[str]) -> float:
    """Issues the terminate calls concurrently (one thread and client each, released together);
    returns the time just before the release."""
    clients = [emu.client("autoscaling") for _ in victims]
    barrier = threading.Barrier(len(victims) + 1)
    errors: list[Exception] = []

    def go(c, iid: str) -> None:
        barrier.wait()
        try:
            c.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(c, i)) for c, i in zip(clients, victims)]
    for t in threads:
        t.start()
    t0 = time.time()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: terminate failed: {errors[0]}")
    return t0


class Fleet:
    """N lastcall daemons (one per instance of the group)."""

    def __init__(self, emu: Emulator, lastcall: str, work: Path, group: str, queue_url: str | None, imds: bool = False) -> None:
        self.emu, self.lastcall, self.work, self.group, self.queue_url = emu, lastcall, work, group, queue_url
        self.imds = imds or not queue_url
        self.procs: dict[str, Lastcall] = {}
        self.offsets: dict[str, int] = {}

    def start(self, iids: list[str]) -> None:
        for iid in iids:
            d = self.work / iid
            d.mkdir()
            cfg = lastcall_config(d, queue_url=self.queue_url, imds_interval="2s" if self.imds else None)
            self.procs[iid] = Lastcall(self.lastcall, d, aws_env(d, self.emu.endpoint, self.emu.imds(iid), f"lc-{iid}"), cfg)
        ready = "polling the lifecycle queue" if self.queue_url else "target lifecycle state"
        wait_for(f"{len(iids)} lastcall daemons to start", lambda: all(self.procs[i].logged(ready) for i in iids), timeout=120, step=0.1)
        for iid in iids:
            if self.procs[iid].proc.poll() is not None:
                raise SystemExit(f"bench: lastcall for {iid} exited: {self.procs[iid].log.read_text()[-2000:]}")

    def mark(self) -> None:
        self.offsets = {iid: p.log.stat().st_size for iid, p in self.procs.items()}

    def new_lines(self) -> list[dict]:
        out = []
        for iid, p in self.procs.items():
            with open(p.log, "rb") as f:
                f.seek(self.offsets.get(iid, 0))
                for line in f.read().decode(errors="replace").splitlines():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out

    def stop(self, iids: list[str] | None = None) -> None:
        for iid in list(iids if iids is not None else self.procs):
            p = self.procs.pop(iid)
            p.stop()

    def live(self) -> list[str]:
        return list(self.procs)


def lastcall_fleet(lastcall: str, mode: str, n: int, rounds: int, idle: float, rnd: random.Random, fraction: float = 0.1,
                   round_cap: float = 120.0, realistic: bool = False) -> dict:
    m = max(1, round(n * fraction))
    work = workdir(f"fleet-{mode}-{n}")
    out: dict = {"n": n, "m": m, "mode": mode, "fraction": fraction, "realistic": realistic, "rounds": []}
    knobs = dict(REALISTIC_GROUP) if realistic else {}
    # How often the harness asks the emulator which actions are completed (GET /actions, which
    # answers every action so far): every 20 ms for a few terminations; for many, every 250 ms,
    # so that the harness's own polling does not load the emulator it measures. Completion times
    # are the emulator's own `finished_at`, not the moment the harness noticed.
    step = 0.02 if m <= 10 else 0.25
    with Emulator() as emu:
        fleet = None
        try:
            name = f"fleet-{mode}-{n}"
            url = arn = None
            if mode in ("sqs", "both"):
                url, arn = emu.queue(name)
            iids = emu.group(name, n, arn)
            if realistic:
                emu.realism({"seed": REALISTIC_SEED})
                out["knobs"] = {"group": emu.realism({"group": name, **REALISTIC_GROUP})}
                if url:
                    out["knobs"]["queue"] = emu.realism({"queue": name, **REALISTIC_QUEUE})
                out["knobs"]["seed"] = REALISTIC_SEED
            fleet = Fleet(emu, lastcall, work, name, url, imds=mode == "both")
            t = time.time()
            fleet.start(iids)
            out["start_s"] = time.time() - t
            if url:
                wait_for("the test notification to be deleted", lambda: emu.queue_depth(url) == 0, timeout=60, step=0.1)
            time.sleep(1)
            # Idle.
            emu.reset_calls()
            t = time.time()
            time.sleep(idle)
            c = emu.calls()
            span = time.time() - t
            out["idle"] = {
                "seconds": span,
                "aws_calls": count(c, key_prefix="lc-"),
                "aws_calls_per_instance_per_min": count(c, key_prefix="lc-") / n / (span / 60),
                "by_action": by_action(c, "lc-"),
                "imds_requests_per_instance_per_min": imds_requests(c) / n / (span / 60),
            }
            log(f"fleet {mode} N={n}: idle {span:.0f} s: {out['idle']['aws_calls']} AWS calls, {out['idle']['by_action']}")
            for r in range(rounds):
                live = fleet.live()
                victims = rnd.sample(live, m)
                fleet.mark()
                emu.reset_calls()
                cpu0 = cpu_seconds(emu.proc.pid), sum(cpu_seconds(p.proc.pid) for p in fleet.procs.values())
                t0 = terminate_at_once(emu, victims)
                deadline = t0 + round_cap
                done = emu.completed(set(victims))
                while len(done) < m and time.time() < deadline:
                    time.sleep(step)
                    done = emu.completed(set(victims))
                t_all = time.time()
                cpu1 = cpu_seconds(emu.proc.pid), sum(cpu_seconds(p.proc.pid) for p in fleet.procs.values())
                complete = len(done) == m
                # The completed messages are deleted just after completion (in `both` mode, when
                # each owner receives its message, which can be after the completion).
                queue_empty_s = None
                if url and complete:
                    try:
                        wait_for("the queue to be empty", lambda: emu.queue_depth(url) == 0, timeout=max(60.0, deadline - time.time()), step=0.05)
                        queue_empty_s = time.time() - t0
                    except TimeoutError as e:
                        log(f"fleet {mode} N={n}: {e}")
                time.sleep(0.5)
                c = emu.calls()
                span = time.time() - t0
                lat = [done[v] - t0 for v in victims if v in done]
                # Each victim's action (the latest, if it had several): when the emulator began it
                # and when its state became visible (+ describe_lag).
                acts: dict[str, dict] = {}
                vset = set(victims)
                for a in emu.actions():
                    if a["instance"] in vset:
                        if a["instance"] not in acts or a["started_at"] >= acts[a["instance"]]["started_at"]:
                            acts[a["instance"]] = a
                lag = knobs.get("describe_lag", 0.0)
                started = {v: parse_iso(a["started_at"]) for v, a in acts.items()}
                from_visible = [done[v] - (started[v] + lag) for v in victims if v in done and v in started]
                states = dict(Counter(a["state"] for a in acts.values()))
                lines = fleet.new_lines()
                # lastcall's warnings and errors in the round, by message.
                problems = dict(Counter(f"{l.get('level')}: {l.get('message')}" for l in lines if l.get("level") in ("WARN", "ERROR")))
                foreign = sum(1 for l in lines if l.get("message") in (FOREIGN_FIRST, FOREIGN_AGAIN))
                aside = sum(1 for l in lines if str(l.get("message", "")).startswith(STEPPED_ASIDE))
                sqs_calls = count(c, key_prefix="lc-", service="sqs")
                asg_calls = count(c, key_prefix="lc-", service="autoscaling")
                rr = {
                    "completed": len(done),
                    "cap_s": round_cap,
                    "all_completed_s": max(lat) if complete else None,
                    "latency_s": lat,
                    # From the moment each one's state became visible (started_at + describe_lag).
                    "all_from_visible_s": max(from_visible) if complete and from_visible else None,
                    "from_visible_s": from_visible,
                    # How long after the first terminate call the emulator began the last action.
                    "last_action_began_s": (max(started.values()) - t0) if started else None,
                    "action_states": states,
                    "warnings_errors": problems,
                    "window_s": span,
                    "sqs_calls": sqs_calls,
                    "sqs_calls_per_termination": sqs_calls / max(1, len(done)),
                    "autoscaling_calls_per_termination": asg_calls / m,
                    "by_action": by_action(c, "lc-"),
                    # Requests to the fake IMDS servers (which run inside the emulator's process):
                    # the leaving instances' polls and the staying ones' reads while stepped aside.
                    "imds_requests": imds_requests(c),
                    "foreign_receptions": foreign,
                    "foreign_per_termination": foreign / max(1, len(done)),
                    "stepped_aside": aside,
                    # The highest ApproximateReceiveCount any message reached (the emulator's
                    # count since the round began): what a dead-letter maxReceiveCount must exceed.
                    "max_receive_count": (c.get("max_receive_count") or {}).get(name),
                    "wall_s": t_all - t0,
                    # From the first terminate call until the queue was empty again.
                    "queue_empty_s": queue_empty_s,
                    # CPU seconds used from the first terminate call until the last completion.
                    "emulator_cpu_s": cpu1[0] - cpu0[0],
                    "lastcall_cpu_s": cpu1[1] - cpu0[1],
                }
                out["rounds"].append(rr)
                how = f"all completed in {max(lat):.2f} s" if complete else f"only {len(done)} of {m} completed within {round_cap:.0f} s"
                if from_visible:
                    how += (f" (from visible: median {sorted(from_visible)[len(from_visible) // 2]:.2f} s, max {max(from_visible):.2f} s; "
                            f"last action began at +{rr['last_action_began_s']:.2f} s; states {states})")
                if problems:
                    how += f"; lastcall warnings/errors {problems}"
                log(f"fleet {mode} N={n} M={m} round {r + 1}: {how} (median {sorted(lat)[len(lat) // 2] if lat else float('nan'):.2f} s), "
                    f"{sqs_calls / m:.1f} SQS + {asg_calls / m:.1f} Auto Scaling calls per termination, {foreign / m:.1f} wrong receptions per termination, "
                    f"{aside} instances stepped aside, highest receive count of a message {rr['max_receive_count']}, "
                    f"queue empty after {queue_empty_s if queue_empty_s is not None else float('nan'):.1f} s; "
                    f"{rr['imds_requests']} IMDS requests; CPU: emulator {rr['emulator_cpu_s']:.2f} s, lastcall {rr['lastcall_cpu_s']:.2f} s")
                # Back to N: the victims' daemons stop (their instances are gone), new instances get theirs.
                fleet.stop(victims)
                stopped = time.time()
                if not complete:
                    break  # what is left would spill into the next round
                if r + 1 < rounds:
                    emu.asg.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=n)
                    fresh = [i for i in emu.instances(name) if i not in fleet.procs]
                    fleet.start(fresh)
                    if url:
                        # A stopped daemon's long poll stays open on the emulator (moto does not
                        # notice the closed connection) and would take the next round's messages
                        # and hide them for the visibility timeout: let those polls run out (20 s).
                        # And the instances that stepped out of the queue's way this round
                        # ([sqs] step_aside, 30 s) are back before the next round starts, so that
                        # every round starts with the whole fleet polling.
                        time.sleep(max(0.0, stopped + 32 - time.time()))
                    time.sleep(1)
        finally:
            if fleet:
                fleet.stop()
            cleanup(work)
    allr = out["rounds"]
    out["incomplete_rounds"] = sum(1 for r in allr if r["all_completed_s"] is None)
    out["all_completed"] = summary([r["all_completed_s"] for r in allr if r["all_completed_s"] is not None])
    out["latency"] = summary([x for r in allr for x in r["latency_s"]])
    out["all_from_visible"] = summary([r["all_from_visible_s"] for r in allr if r["all_from_visible_s"] is not None])
    out["from_visible"] = summary([x for r in allr for x in r["from_visible_s"]])
    out["max_receive_count"] = max((r["max_receive_count"] or 0 for r in allr), default=None)
    out["emulator_cpu_share"] = sum(r["emulator_cpu_s"] for r in allr) / max(1e-9, sum(r["wall_s"] for r in allr))
    nterm = sum(r["completed"] for r in allr) or 1
    out["terminations"] = sum(r["completed"] for r in allr)
    out["terminations_started"] = m * len(allr)
    # Per completed termination (an incomplete round's calls are counted too, so this is an upper bound there).
    out["sqs_calls_per_termination"] = sum(r["sqs_calls"] for r in allr) / nterm
    out["autoscaling_calls_per_termination"] = sum(r["autoscaling_calls_per_termination"] * m for r in allr) / nterm
    out["foreign_per_termination"] = sum(r["foreign_receptions"] for r in allr) / nterm
    return out


def baseline_fleets(n: int, fleets: int, cap: float, idle: float, rnd: random.Random) -> dict:
    """`fleets` independent groups of n instances, each with the baseline script looping on every
    instance and one queue (visibility timeout 30 s); one instance of each group terminated at the
    same moment; waits up to `cap` seconds."""
    m = max(1, n // 10)
    work = workdir("fleet-baseline")
    out: dict = {"n": n, "m": m, "fleets": fleets, "cap_s": cap, "visibility_timeout_s": 30}
    loops: dict[str, Baseline] = {}
    with Emulator() as emu:
        try:
            groups = []
            for f in range(fleets):
                name = f"baseline-{f}"
                url, arn = emu.queue(name, visibility_timeout=30)
                iids = emu.group(name, n, arn)
                for iid in iids:
                    d = work / iid
                    d.mkdir()
                    loops[iid] = Baseline(d, aws_env(d, emu.endpoint, emu.imds(iid), f"bl-{iid}"), url, wait=20)
                groups.append((name, url, iids))
            wait_for("every baseline loop to long-poll",
                     lambda: (lambda c: all(count(c, key_prefix=f"bl-{i}", action="ReceiveMessage") >= 1 for i in loops))(emu.calls()),
                     timeout=180, step=0.5)
            wait_for("the test notifications to be deleted", lambda: all(emu.queue_depth(u) == 0 for _, u, _ in groups), timeout=120, step=0.5)
            emu.reset_calls()
            t = time.time()
            time.sleep(idle)
            c = emu.calls()
            span = time.time() - t
            out["idle"] = {"seconds": span, "sqs_calls_per_instance_per_min": count(c, key_prefix="bl-", service="sqs") / len(loops) / (span / 60)}
            victims = [rnd.choice(iids) for _, _, iids in groups]
            offsets = {i: b.log.stat().st_size for i, b in loops.items()}
            emu.reset_calls()
            t0 = terminate_at_once(emu, victims)
            deadline = t0 + cap
            while time.time() < deadline and len(emu.completed(set(victims))) < len(victims):
                time.sleep(0.5)
            done = emu.completed(set(victims))
            c = emu.calls()
            span = time.time() - t0
            wrong = 0
            for iid, b in loops.items():
                with open(b.log, "rb") as fh:
                    fh.seek(offsets[iid])
                    wrong += sum(1 for line in fh.read().decode(errors="replace").splitlines() if "not us; leaving it" in line)
            out["terminations"] = [{"group": g, "instance": v, "completed": v in done, "latency_s": (done[v] - t0) if v in done else None}
                                   for (g, _, _), v in zip(groups, victims)]
            out["completed"] = len(done)
            out["window_s"] = span
            out["wrong_receptions"] = wrong
            out["wrong_per_termination"] = wrong / len(victims)
            out["sqs_calls"] = count(c, key_prefix="bl-", service="sqs")
            out["sqs_calls_per_termination"] = out["sqs_calls"] / len(victims)
            lat = [x["latency_s"] for x in out["terminations"] if x["latency_s"] is not None]
            out["latency"] = summary(lat)
            log(f"baseline fleets {fleets} x N={n}: {len(done)}/{len(victims)} completed within {cap:.0f} s, latencies {[round(x, 1) for x in lat]}, "
                f"{wrong} wrong receptions")
        finally:
            for b in loops.values():
                b.stop()
            cleanup(work)
    return out


def baseline_model(n: int, m: int, vt: float, handle: float, rnd: random.Random, trials: int = 2000) -> dict:
    """The baseline's behaviour on a shared queue, as a model: each time a message becomes visible
    it is received by one of the n instances at random; the owner (probability 1/n) completes it
    `handle` seconds later, anyone else leaves it invisible for `vt` seconds (+0.5 s: moto's
    long poll notices a message made visible by time only on its 1 s poll step). Each message is
    independent (optimistic: on the emulator one receive takes the whole batch, so at most one
    completes per visibility period). Returns the time until all m are completed and the per-message
    latency."""
    alls, each, wrong = [], [], []
    p = 1.0 / n
    for _ in range(trials):
        lats = []
        for _ in range(m):
            # Receptions until the owner gets it: geometric.
            k = 1 + int(math.log(1.0 - rnd.random()) / math.log(1.0 - p)) if p < 1 else 1
            lats.append((k - 1) * (vt + 0.5) + handle)
            wrong.append(k - 1)
        alls.append(max(lats))
        each.extend(lats)
    return {"n": n, "m": m, "all_completed": summary(alls), "latency": summary(each), "wrong_per_termination": sum(wrong) / len(wrong)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--modes", default="sqs,imds,baseline")
    ap.add_argument("--baseline-n", type=int, default=10)
    ap.add_argument("--baseline-fleets", type=int, default=3)
    ap.add_argument("--baseline-cap", type=float, default=600)
    ap.add_argument("--baseline-handle", type=float, default=1.4, help="seconds the script takes once it has its message (the model's)")
    ap.add_argument("--round-cap", type=float, default=120, help="seconds a round may take before it is recorded as incomplete")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the fleet terminated at once (M = N x this)")
    ap.add_argument("--realistic", action="store_true", help="the emulator's realism knobs at REALISTIC_GROUP / REALISTIC_QUEUE for every group and queue")
    ap.add_argument("--name", default="fleet", help="with --json: results/NAME.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lastcall = str(Path(args.lastcall).resolve())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rnd = random.Random(6)
    started = time.time()
    load0 = os.getloadavg()
    res: dict = {"sizes": sizes, "rounds": args.rounds, "idle_s": args.idle, "fraction": args.fraction, "realistic": args.realistic,
                 "knobs": {"group": REALISTIC_GROUP, "queue": REALISTIC_QUEUE, "seed": REALISTIC_SEED} if args.realistic else None}
    for mode in ("sqs", "imds", "both"):
        if mode in modes:
            res[mode] = []
            for n in sizes:
                log(f"fleet: {mode}, N={n}, M={max(1, round(n * args.fraction))}, {args.rounds} rounds{', realistic knobs' if args.realistic else ''}")
                res[mode].append(lastcall_fleet(lastcall, mode, n, args.rounds, args.idle, rnd, args.fraction, args.round_cap, args.realistic))
    if "baseline" in modes:
        log(f"fleet: baseline, {args.baseline_fleets} fleets of N={args.baseline_n}, cap {args.baseline_cap:.0f} s")
        res["baseline"] = baseline_fleets(args.baseline_n, args.baseline_fleets, args.baseline_cap, min(args.idle, 60), rnd)
        res["baseline_model"] = [baseline_model(n, max(1, n // 10), 30.0, args.baseline_handle, random.Random(n)) for n in sizes]
    res["seconds"] = time.time() - started
    res["loadavg_start"] = load0
    if args.json:
        write_result(args.name, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
