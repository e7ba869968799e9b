#!/usr/bin/env python3
"""Scale-in to CompleteLifecycleAction latency, no steps: lastcall against the baseline script.

Every termination gets a fresh group of one instance with a terminating hook (to a fresh queue, or
without a notification target for the instance-metadata mode) and a fresh process. The latency is
from just before TerminateInstanceInAutoScalingGroup to the moment the emulator recorded the
CompleteLifecycleAction (its own clock, millisecond resolution).

Modes (measured):
  baseline-loop   bench/baseline/asg-drain.sh in a tight loop (long poll of 20 s, as scripts
                  do); terminated while its receive is in flight
  baseline-pass   one pass of the script with --wait-time-seconds 0 (what cron runs), started
                  when the message is already in the queue: from its start to the completion
  sqs             `lastcall run` with the queue (long poll), terminated while it waits
  imds-2s         `lastcall run` with [imds] lifecycle = true, poll_interval 2s (the default),
                  terminated at a random point of its poll cycle
  imds-200ms      the same with poll_interval 200ms
  once-sqs        `lastcall once` (as the shipped lastcall-once.service runs it) with the queue,
                  started when the message is already in the queue
  once-imds       `lastcall once` with [imds], started when the instance is already terminating
Modes (computed from the measured ones, see RESULTS.md):
  baseline-cron   cron every minute: the wait for the next minute (uniform 0-60 s) + one pass
  timer-sqs       the shipped lastcall-once.timer (minutely, RandomizedDelaySec=10s,
                  AccuracySec=1s) + `lastcall once` with the queue; a termination during a
                  run's 20 s long poll is handled at once
  timer-imds      the same timer + `lastcall once` with [imds]

Usage: scale_in_latency.py PATH_TO_LASTCALL [--runs 20] [--modes sqs,imds-2s,...] [--json]
Prints one line per termination and a summary per mode; --json writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Baseline, Emulator, Lastcall, aws_env, cleanup, count, lastcall_config, log, summary, wait_for,
    workdir, write_result,
)

MEASURED = ["baseline-loop", "baseline-pass", "sqs", "imds-2s", "imds-200ms", "once-sqs", "once-imds"]
# The shipped timer (deploy/systemd/lastcall-once.timer) and cron's minute.
INTERVAL = 60.0
RANDOMIZED_DELAY = 10.0
ACCURACY = 1.0
ONCE_WAIT = 20.0  # the shipped lastcall-once.service runs `lastcall once`: [sqs] wait_time, 20 s
ONCE_STARTUP = 0.1  # a run's long poll is taken to begin this long after its start (measured start-up: well under)
MODEL_SAMPLES = 200_000


def completion(emu: Emulator, iid: str, timeout: float = 120.0) -> float:
    done = wait_for(f"the completion of {iid}", lambda: emu.completed({iid}), timeout=timeout, step=0.005)
    return done[iid]


def fresh(emu: Emulator, name: str, *, queue: bool) -> tuple[str | None, str]:
    url = arn = None
    if queue:
        url, arn = emu.queue(name)
    iid = emu.group(name, 1, arn)[0]
    return url, iid


def run_mode(emu: Emulator, lastcall: str, mode: str, runs: int, rnd: random.Random) -> dict:
    lat: list[float] = []
    wall: list[float] = []
    for run in range(runs):
        name = f"{mode}-{run}"
        work = workdir(name)
        procs: list = []
        try:
            if mode == "baseline-loop":
                url, iid = fresh(emu, name, queue=True)
                key = f"bl-{iid}"
                b = Baseline(work, aws_env(work, emu.endpoint, emu.imds(iid), key), url, wait=20)
                procs.append(b)
                wait_for("the baseline to delete the test notification", lambda: "test notification" in b.text(), timeout=60)
                # Its next long poll has reached the queue.
                wait_for("the baseline's next long poll", lambda: count(emu.calls(), key_prefix=key, action="ReceiveMessage") >= 2, timeout=60)
                time.sleep(rnd.uniform(0.1, 0.5))
                t0 = time.time()
                emu.terminate(iid)
                lat.append(completion(emu, iid) - t0)
            elif mode == "baseline-pass":
                url, iid = fresh(emu, name, queue=True)
                env = aws_env(work, emu.endpoint, emu.imds(iid), f"bl-{iid}")
                emu.sqs.purge_queue(QueueUrl=url)  # the test notification: long gone on a cron host
                emu.terminate(iid)
                wait_for("the notification", lambda: emu.queue_depth(url) >= 1)
                t0 = time.time()
                b = Baseline(work, env, url, wait=0, loop=False)
                b.proc.wait(timeout=120)
                wall.append(time.time() - t0)
                lat.append(completion(emu, iid) - t0)
            elif mode == "sqs":
                url, iid = fresh(emu, name, queue=True)
                cfg = lastcall_config(work, queue_url=url)
                p = Lastcall(lastcall, work, aws_env(work, emu.endpoint, emu.imds(iid), f"lc-{iid}"), cfg)
                procs.append(p)
                wait_for("the test notification to be handled", lambda: p.logged("TEST_NOTIFICATION"))
                time.sleep(0.2)  # the daemon is back in its long poll
                t0 = time.time()
                emu.terminate(iid)
                lat.append(completion(emu, iid) - t0)
            elif mode.startswith("imds-"):
                interval = mode.split("-", 1)[1]
                seconds = float(interval[:-2]) / 1000 if interval.endswith("ms") else float(interval[:-1])
                _, iid = fresh(emu, name, queue=False)
                cfg = lastcall_config(work, imds_interval=interval)
                p = Lastcall(lastcall, work, aws_env(work, emu.endpoint, emu.imds(iid), f"lc-{iid}"), cfg)
                procs.append(p)
                wait_for("lastcall to poll instance metadata", lambda: p.logged("target lifecycle state"), timeout=30)
                time.sleep(rnd.uniform(0, seconds))  # a random point of the poll cycle
                t0 = time.time()
                emu.terminate(iid)
                lat.append(completion(emu, iid) - t0)
            elif mode in ("once-sqs", "once-imds"):
                queue = mode == "once-sqs"
                url, iid = fresh(emu, name, queue=queue)
                cfg = lastcall_config(work, queue_url=url) if queue else lastcall_config(work, imds_interval="2s")
                env = aws_env(work, emu.endpoint, emu.imds(iid), f"lc-{iid}")
                if queue:
                    emu.sqs.purge_queue(QueueUrl=url)
                emu.terminate(iid)
                if queue:
                    wait_for("the notification", lambda: emu.queue_depth(url) >= 1)
                t0 = time.time()
                p = Lastcall(lastcall, work, env, cfg, ["once"])
                rc = p.proc.wait(timeout=120)
                wall.append(time.time() - t0)
                if rc != 0:
                    raise SystemExit(f"bench: lastcall once exited with {rc}; log: {p.log.read_text()}")
                lat.append(completion(emu, iid, timeout=5) - t0)
            else:
                raise SystemExit(f"unknown mode {mode}")
            print(f"{mode:14s} {run + 1:2d}: {1000 * lat[-1]:8.1f} ms" + (f" (process {1000 * wall[-1]:.0f} ms)" if wall else ""), flush=True)
        finally:
            for p in procs:
                p.stop()
            cleanup(work)
    out = {"latency_s": lat, "summary": summary(lat)}
    if wall:
        out["process_wall_s"] = wall
        out["process_summary"] = summary(wall)
    return out


# --- the computed modes ---------------------------------------------------------------------
def activations(rnd: random.Random, horizon: float, jitter: bool) -> list[float]:
    """Start times of the periodic job over [0, horizon + interval): cron fires on the minute;
    the timer at the minute plus a fresh RandomizedDelaySec draw plus up to AccuracySec."""
    out = []
    k = 0
    while k * INTERVAL < horizon + 2 * INTERVAL:
        t = k * INTERVAL
        if jitter:
            t += rnd.uniform(0, RANDOMIZED_DELAY) + rnd.uniform(0, ACCURACY)
        out.append(t)
        k += 1
    return sorted(out)


def model(pass_lat: list[float], rnd: random.Random, *, jitter: bool, window: float = 0.0, window_lat: list[float] | None = None,
          startup: float = 0.0) -> list[float]:
    """Latency of a termination at a uniformly random moment, for a job started periodically:
    the wait for the next start plus one measured run (a random one of the measured samples).
    With a long-poll window, a termination within [start + startup, start + startup + window)
    of a run is handled during that run (a random sample of window_lat)."""
    import bisect

    horizon = 3600.0 * 24
    starts = activations(rnd, horizon, jitter)
    out = []
    for _ in range(MODEL_SAMPLES):
        t = rnd.uniform(INTERVAL, horizon)
        i = bisect.bisect_right(starts, t)
        prev, nxt = starts[i - 1], starts[i]
        if window and prev + startup <= t < prev + startup + window:
            out.append(rnd.choice(window_lat))
        else:
            out.append(nxt - t + rnd.choice(pass_lat))
    return out


def computed(results: dict, rnd: random.Random) -> dict:
    out = {}
    if "baseline-pass" in results:
        lat = model(results["baseline-pass"]["latency_s"], rnd, jitter=False)
        out["baseline-cron"] = {"summary": summary(lat), "from": "baseline-pass", "how": "cron at every minute tick; wait uniform 0-60 s + one measured pass"}
    if "once-sqs" in results:
        window_lat = results.get("sqs", {}).get("latency_s") or results["once-sqs"]["latency_s"]
        lat = model(results["once-sqs"]["latency_s"], rnd, jitter=True, window=ONCE_WAIT, window_lat=window_lat,
                    startup=ONCE_STARTUP)
        out["timer-sqs"] = {"summary": summary(lat), "from": "once-sqs, sqs", "how": "lastcall-once.timer; a termination during a run's 20 s long poll is handled as by the daemon"}
    if "once-imds" in results:
        lat = model(results["once-imds"]["latency_s"], rnd, jitter=True)
        out["timer-imds"] = {"summary": summary(lat), "from": "once-imds", "how": "lastcall-once.timer + one measured `lastcall once` ([imds])"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--modes", default=",".join(MEASURED))
    ap.add_argument("--json", action="store_true", help="write bench/results/latency.json")
    args = ap.parse_args()
    lastcall = str(Path(args.lastcall).resolve())
    modes = [m for m in args.modes.split(",") if m]
    rnd = random.Random(6)
    started = time.time()
    load0 = os.getloadavg()
    results: dict = {}
    with Emulator() as emu:
        for mode in modes:
            log(f"latency: {mode}, {args.runs} terminations")
            results[mode] = run_mode(emu, lastcall, mode, args.runs, rnd)
    extra = computed(results, random.Random(60))
    for mode, r in list(results.items()) + list(extra.items()):
        s = r["summary"]
        print(f"{mode:14s}: median {1000 * s['median']:8.0f} ms, p95 {1000 * s['p95']:8.0f} ms, max {1000 * s['max']:8.0f} ms (n={s['n']})")
    if args.json:
        write_result("latency", {"runs": args.runs, "measured": results, "computed": extra, "seconds": time.time() - started, "loadavg_start": load0,
                                 "timer": {"interval_s": INTERVAL, "randomized_delay_s": RANDOMIZED_DELAY, "accuracy_s": ACCURACY, "once_wait_s": ONCE_WAIT,
                                           "model_samples": MODEL_SAMPLES}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
