#!/usr/bin/env python3
"""Footprint of lastcall, with standard tools (/proc, /usr/bin/time -v, ls):

- the release binary's size (already stripped by the release profile; `file` says so);
- idle `lastcall run` in each mode (the queue, [imds] with the default 2 s poll), both started
  together on one emulator, each for its own instance: RSS from /proc/PID/status (VmRSS sampled
  once a second, VmHWM) and CPU time from /proc/PID/stat (utime + stime) over the idle period,
  from 2 s after start-up; and the AWS calls and IMDS requests each one made meanwhile;
- `lastcall once --wait 0s` on an empty queue (and `lastcall once` with [imds] on an instance in
  service) under /usr/bin/time -v: wall time (also timed here with a monotonic clock, as
  /usr/bin/time rounds to 10 ms) and maximum RSS.

Usage: idle_footprint.py PATH_TO_LASTCALL [--seconds 600] [--rss-seconds 60] [--once-runs 20] [--json]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Emulator, Lastcall, aws_env, by_action, cleanup, count, cpu_seconds, lastcall_config, log, proc_kib,
    summary, wait_for, workdir, write_result,
)


def time_v(cmd: list[str], env: dict[str, str]) -> dict:
    t = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t
    out = {"rc": r.returncode, "wall_s": wall}
    for line in r.stderr.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            out["max_rss_kib"] = int(line.rsplit(":", 1)[1])
        elif line.startswith("Elapsed (wall clock) time"):
            v = line.rsplit(": ", 1)[1]
            parts = [float(p) for p in v.split(":")]
            out["time_v_wall_s"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        elif line.startswith("User time (seconds):"):
            out["user_s"] = float(line.rsplit(":", 1)[1])
        elif line.startswith("System time (seconds):"):
            out["sys_s"] = float(line.rsplit(":", 1)[1])
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} exited with {r.returncode}: {r.stderr[-3000:]}")
    return out


def binary_info(path: str) -> dict:
    st = os.stat(path)
    file_out = subprocess.run(["file", "-b", path], capture_output=True, text=True).stdout.strip() if Path("/usr/bin/file").exists() else ""
    sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True).stdout if Path("/usr/bin/readelf").exists() else ""
    return {
        "bytes": st.st_size,
        "mib": st.st_size / 2**20,
        "mb": st.st_size / 1e6,
        "file": file_out,
        "stripped": "not stripped" not in file_out and ".symtab" not in sections,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--seconds", type=int, default=600, help="idle period for the CPU time")
    ap.add_argument("--rss-seconds", type=int, default=60, help="RSS is sampled once a second over this many seconds")
    ap.add_argument("--once-runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lastcall = str(Path(args.lastcall).resolve())
    started = time.time()
    load0 = os.getloadavg()
    res: dict = {"binary": binary_info(lastcall), "seconds": args.seconds, "rss_seconds": args.rss_seconds}
    log(f"footprint: binary {res['binary']['bytes']} bytes ({res['binary']['mib']:.2f} MiB), stripped: {res['binary']['stripped']}")
    work = workdir("footprint")
    procs: dict[str, Lastcall] = {}
    try:
        with Emulator() as emu:
            # `lastcall once` first, while nothing else runs.
            url, arn = emu.queue("once")
            iid = emu.group("once", 1, arn)[0]
            d = work / "once-sqs"
            d.mkdir()
            env = aws_env(d, emu.endpoint, emu.imds(iid), f"once-{iid}")
            emu.sqs.purge_queue(QueueUrl=url)
            runs = {"sqs": [], "imds": []}
            cfg_sqs = lastcall_config(d, queue_url=url)
            d2 = work / "once-imds"
            d2.mkdir()
            cfg_imds = lastcall_config(d2, imds_interval="2s")
            env2 = aws_env(d2, emu.endpoint, emu.imds(iid), f"once-{iid}")
            for _ in range(args.once_runs):
                runs["sqs"].append(time_v([lastcall, "--config", str(cfg_sqs), "once", "--wait", "0s"], env))
                runs["imds"].append(time_v([lastcall, "--config", str(cfg_imds), "once"], env2))
            res["once"] = {}
            for mode, rs in runs.items():
                res["once"][mode] = {
                    "runs": rs,
                    "wall": summary([r["wall_s"] for r in rs]),
                    "time_v_wall": summary([r["time_v_wall_s"] for r in rs]),
                    "max_rss_kib": summary([r["max_rss_kib"] for r in rs]),
                    "cpu": summary([r["user_s"] + r["sys_s"] for r in rs]),
                }
                w = res["once"][mode]["wall"]
                log(f"footprint: lastcall once ({mode}, empty): wall median {1000 * w['median']:.0f} ms, p95 {1000 * w['p95']:.0f} ms, "
                    f"max RSS {res['once'][mode]['max_rss_kib']['max'] / 1024:.1f} MiB")

            # Idle daemons, one per mode, started together.
            for mode in ("sqs", "imds"):
                url = arn = None
                if mode == "sqs":
                    url, arn = emu.queue(f"idle-{mode}")
                iid = emu.group(f"idle-{mode}", 1, arn)[0]
                d = work / f"idle-{mode}"
                d.mkdir()
                cfg = lastcall_config(d, queue_url=url) if url else lastcall_config(d, imds_interval="2s")
                procs[mode] = Lastcall(lastcall, d, aws_env(d, emu.endpoint, emu.imds(iid), f"idle-{mode}-{iid}"), cfg)
            wait_for("the idle daemons to start", lambda: procs["sqs"].logged("TEST_NOTIFICATION") and procs["imds"].logged("target lifecycle state"), timeout=60)
            time.sleep(2)
            emu.reset_calls()
            cpu0 = {m: cpu_seconds(p.proc.pid) for m, p in procs.items()}
            rss: dict[str, list[int]] = {m: [] for m in procs}
            t0 = time.monotonic()
            log(f"footprint: both daemons idle for {args.seconds} s (RSS over the first {args.rss_seconds} s)")
            i = 0
            while time.monotonic() - t0 < args.seconds:
                if i < args.rss_seconds:
                    for m, p in procs.items():
                        rss[m].append(proc_kib(p.proc.pid, "VmRSS"))
                i += 1
                time.sleep(max(0.0, t0 + i - time.monotonic()))
            span = time.monotonic() - t0
            c = emu.calls()
            res["idle"] = {}
            for m, p in procs.items():
                if p.proc.poll() is not None:
                    raise SystemExit(f"bench: the {m} daemon exited: {p.log.read_text()[-2000:]}")
                cpu = cpu_seconds(p.proc.pid) - cpu0[m]
                key = f"idle-{m}-"
                calls = count(c, key_prefix=key)
                # The metadata daemon is the only one reading IMDS while idle (the queue one reads
                # it only while stepping aside, which needs others' messages).
                reads = sum(c["imds"].values()) if m == "imds" else 0
                requests = calls + reads
                res["idle"][m] = {
                    "seconds": span,
                    "rss_kib": summary(rss[m]),
                    "vmhwm_kib": proc_kib(p.proc.pid, "VmHWM"),
                    "threads": proc_kib(p.proc.pid, "Threads"),
                    "cpu_s": cpu,
                    "cpu_s_per_hour": cpu * 3600 / span,
                    "aws_calls": calls,
                    "imds_reads": reads,
                    "cpu_ms_per_request": cpu * 1000 / requests if requests else None,
                    "by_action": by_action(c, key),
                }
                r = res["idle"][m]
                per = f"{r['cpu_ms_per_request']:.2f} ms" if r["cpu_ms_per_request"] is not None else "-"
                log(f"footprint: idle {m}: RSS max {r['rss_kib']['max'] / 1024:.1f} MiB, VmHWM {r['vmhwm_kib'] / 1024:.1f} MiB, CPU {cpu:.2f} s in {span:.0f} s "
                    f"({r['cpu_s_per_hour']:.2f} s per hour, {per} per request), AWS calls {r['aws_calls']}, IMDS reads {reads}")
            # Every AWS call of the idle window is the queue daemon's: a long poll on a kept
            # connection needs no new one.
            res["idle_connections_accepted"] = c.get("connections")
            log(f"footprint: AWS endpoint connections accepted while idle: {c.get('connections')} "
                f"(for {res['idle']['sqs']['aws_calls']} calls)")
            res["idle_imds_requests"] = c["imds"]
    finally:
        for p in procs.values():
            p.stop()
        cleanup(work)
    res["seconds_total"] = time.time() - started
    res["loadavg_start"] = load0
    if args.json:
        write_result("footprint", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
