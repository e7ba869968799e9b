#!/usr/bin/env python3
"""Writes bench/RESULTS.md from bench/results/*.json (written by the benchmarks), with the
machine and the versions.

Usage: report.py PATH_TO_LASTCALL [--mode full|quick] [--seconds TOTAL_RUN_SECONDS]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AWSCLI_VENV, BENCH, RESULTS, ROOT  # noqa: E402


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(lastcall: str) -> list[tuple[str, str]]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), 0)
    aws = sh(str(AWSCLI_VENV / "bin" / "aws"), "--version") or "not installed"
    binary = Path(lastcall)
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(binary.stat().st_mtime))
    commit = sh("git", "rev-parse", "--short", "HEAD")
    dirty = sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("memory", f"{mem / 2**20:.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("rustc", sh("rustc", "--version") or "?"),
        ("lastcall", f"{sh(lastcall, '--version')} (binary sha256 {digest}…, built {built}; source at commit {commit}"
                     + (", with uncommitted changes in src/" if dirty else "") + ")"),
        ("moto (emulator)", metadata.version("moto")),
        ("Python", platform.python_version()),
        ("AWS CLI (baseline)", aws),
        ("jq, curl (baseline)", f"{sh('jq', '--version')}, {sh('curl', '--version').split(chr(10))[0].split(' (')[0]}"),
    ]


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f} s"
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{1000 * x:.0f} ms"


def ratio(a: float, b: float) -> str:
    if not b:
        return "–"
    r = a / b
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


LAT_LABELS = {
    "baseline-cron": ("baseline from cron, every minute", "computed: next minute tick + one measured pass"),
    "baseline-loop": ("baseline in a tight loop", "measured; long poll 20 s"),
    "baseline-pass": ("(one baseline pass, message waiting)", "measured; what cron runs"),
    "sqs": ("`lastcall run`, queue", "measured; long poll 20 s"),
    "imds-2s": ("`lastcall run`, IMDS, poll 2 s (default)", "measured; random phase"),
    "imds-200ms": ("`lastcall run`, IMDS, poll 200 ms", "measured; random phase"),
    "timer-sqs": ("`lastcall once` from lastcall-once.timer, queue", "computed: next timer run + measured `once`"),
    "timer-imds": ("`lastcall once` from lastcall-once.timer, IMDS", "computed: next timer run + measured `once`"),
    "once-sqs": ("(one `lastcall once`, queue, message waiting)", "measured"),
    "once-imds": ("(one `lastcall once`, IMDS, instance terminating)", "measured"),
}
LAT_ORDER = ["baseline-cron", "baseline-loop", "sqs", "imds-2s", "imds-200ms", "timer-sqs", "timer-imds", "baseline-pass", "once-sqs", "once-imds"]
LIKE_FOR_LIKE = {"baseline-cron": "timer-sqs", "baseline-loop": "sqs"}


def latency_section(lat: dict, goals: list) -> str:
    rows = []
    allm = {**lat["measured"], **lat["computed"]}
    ref = allm.get("sqs", {}).get("summary", {}).get("median")
    for mode in LAT_ORDER:
        if mode not in allm:
            continue
        s = allm[mode]["summary"]
        label, how = LAT_LABELS[mode]
        n = "model" if mode in lat["computed"] else str(s["n"])
        like = LIKE_FOR_LIKE.get(mode)
        lf = f"{ratio(s['median'], allm[like]['summary']['median'])} `{like}`" if like in allm else ""
        rows.append([label, f"`{mode}`", how, n, ms(s["median"]), ms(s["p95"]), ms(s["max"]), ratio(s["median"], ref) if ref else "–", lf])
    t = lat["timer"]
    text = [
        "## 1. Latency: scale-in to CompleteLifecycleAction, no steps",
        "",
        f"`bench/scale_in_latency.py`: {lat['runs']} terminations per measured mode, each on a fresh group of one instance and a fresh "
        "process. Latency: from just before `TerminateInstanceInAutoScalingGroup` to the emulator's record of the "
        "`CompleteLifecycleAction`. Ratios are of medians.",
        "",
        table(["mode", "", "how", "n", "median", "p95", "max", "÷ `lastcall run` (queue)", "like for like"], rows),
        "",
        "How the computed rows are computed (`model()` in `scale_in_latency.py`, "
        f"{t['model_samples']:,} terminations at uniformly random moments of a simulated day, seeded):",
        "",
        "- **baseline from cron**: cron starts the script at every minute tick. A termination waits for the next tick "
        "(uniform over 0–60 s) and is then handled by one pass (`--wait-time-seconds 0`), whose time from its start to the "
        "completion is drawn from the measured `baseline-pass` samples. So the median is about 30 s + a pass, the p95 about "
        "57 s + a pass.",
        f"- **`lastcall once` from the timer**: the shipped `lastcall-once.timer` fires every minute (`OnCalendar=minutely`) "
        f"plus a fresh random delay of 0–{t['randomized_delay_s']:.0f} s (`RandomizedDelaySec`) plus up to "
        f"{t['accuracy_s']:.0f} s (`AccuracySec`). A termination waits for the next firing and is then handled in one run, "
        "drawn from the measured `once-sqs` / `once-imds` samples (process start to completion, message already there). "
        f"With the queue, the shipped `lastcall-once.service` runs `lastcall once`, which long-polls for "
        f"`[sqs] wait_time` ({t['once_wait_s']:.0f} s): a termination within that window of a run is received at once "
        "and handled as by the daemon (drawn from the `sqs` samples); that is why the queue timer's median is lower.",
        "",
    ]
    return "\n".join(text)


def fleet_section(fl: dict) -> str:
    out = ["## 2. Fleet: one shared queue, N instances, 10% terminated at once", ""]
    out.append(
        f"`bench/fleet.py`: per N, a group of N instances, each with its own `lastcall run` process, fake IMDSv2, state "
        f"directory and access key id; {fl['rounds']} round{'s' if fl['rounds'] != 1 else ''} per N, each terminating M = N/10 instances with M concurrent "
        "`TerminateInstanceInAutoScalingGroup` calls; after each round the group is scaled back to N and the new instances "
        "get their own lastcall. Times: from the first terminate call to each completion. Calls: lastcall's own (by access "
        "key) from the first terminate call until the queue is empty again, per termination; they include the "
        "fleet's ordinary long polls in that window. Wrong receptions: lastcall's log lines "
        "\"message for another instance\" and (at debug) \"another instance's message again\". Stepped aside: how many staying "
        "instances stepped out of the queue's way in a round (`[sqs] step_aside`, 30 s; every round starts after they are back). "
        "CPU: seconds used during the round by the emulator process and by all lastcall processes together."
    )
    out.append("")
    if fl.get("sqs"):
        rows = []
        for r in fl["sqs"]:
            acts = {}
            for rr in r["rounds"]:
                for k, v in rr["by_action"].items():
                    if k.startswith("sqs:"):
                        acts[k[4:]] = acts.get(k[4:], 0) + v
            nterm = r.get("terminations") or r["m"] * len(r["rounds"])
            breakdown = ", ".join(f"{k} {v / nterm:.1f}" for k, v in sorted(acts.items()))
            emu_cpu = sum(rr["emulator_cpu_s"] for rr in r["rounds"]) / len(r["rounds"])
            lc_cpu = sum(rr["lastcall_cpu_s"] for rr in r["rounds"]) / len(r["rounds"])
            rows.append([str(r["n"]), str(r["m"]), completed_cell(r), all_cell(r, "median"), all_cell(r, "max"),
                         ms(r["latency"].get("median")), ms(r["latency"].get("max")), f"{r['sqs_calls_per_termination']:.1f} ({breakdown})",
                         f"{r['autoscaling_calls_per_termination']:.1f}", f"{r['foreign_per_termination']:.1f}",
                         f"{sum(rr.get('stepped_aside', 0) for rr in r['rounds']) / len(r['rounds']):.0f} of {r['n'] - r['m']}",
                         f"{r['idle']['aws_calls_per_instance_per_min']:.1f}", f"{emu_cpu:.1f} s / {lc_cpu:.1f} s"])
        out += ["### Queue mode (`lastcall run` with `[sqs]`)", "",
                table(["N", "M", "completed (rounds)", "all M completed: median", "max", "each termination: median", "max", "SQS calls per termination",
                       "Auto Scaling calls per termination", "wrong receptions per termination", "stepped aside per round (of the staying)",
                       "idle SQS calls per instance per minute",
                       "CPU in a round: emulator / all lastcall"], rows), ""]
    if fl.get("imds"):
        rows = []
        for r in fl["imds"]:
            nterm = r.get("terminations") or r["m"] * len(r["rounds"])
            acts = {}
            for rr in r["rounds"]:
                for k, v in rr["by_action"].items():
                    acts[k] = acts.get(k, 0) + v
            breakdown = ", ".join(f"{k.split(':', 1)[1]} {v / nterm:.1f}" for k, v in sorted(acts.items()))
            rows.append([str(r["n"]), str(r["m"]), completed_cell(r), all_cell(r, "median"), all_cell(r, "max"),
                         ms(r["latency"].get("median")), ms(r["latency"].get("max")), f"{r['autoscaling_calls_per_termination']:.1f} ({breakdown})",
                         f"{r['idle']['aws_calls']} in {r['idle']['seconds']:.0f} s", f"{r['idle']['imds_requests_per_instance_per_min']:.1f}"])
        out += ["### IMDS mode (`lastcall run` with `[imds] lifecycle = true`, poll 2 s, no queue)", "",
                table(["N", "M", "completed (rounds)", "all M completed: median", "max", "each termination: median", "max", "AWS calls per termination",
                       "AWS calls while idle (whole fleet)", "IMDS requests per instance per minute"], rows), ""]
    if fl.get("baseline"):
        b = fl["baseline"]
        lat = [t["latency_s"] for t in b["terminations"]]
        shown = ", ".join(ms(x) if x is not None else f"not within {b['cap_s']:.0f} s" for x in lat)
        out += ["### Baseline on a shared queue", "",
                f"Measured with real loops: {b['fleets']} independent fleet{'s' if b['fleets'] != 1 else ''} at once, each a group of N = {b['n']} instances running "
                f"`asg-drain.sh` in a tight loop on one queue (visibility timeout {b['visibility_timeout_s']} s), one instance of "
                f"each terminated at the same moment, watched for up to {b['cap_s']:.0f} s:", "",
                table(["N", "M per fleet", "terminations", "completed", "latencies", "wrong receptions per termination", "SQS calls in that time (all loops) per termination",
                       "idle SQS calls per instance per minute"],
                      [[str(b["n"]), str(b["m"]), str(len(lat)), f"{b['completed']} of {len(lat)}", shown,
                        f"{b['wrong_per_termination']:.1f}" + ("" if b["completed"] == len(lat) else " (so far)"),
                        f"{b['sqs_calls_per_termination']:.1f}" + ("" if b["completed"] == len(lat) else " (so far)"),
                        f"{b['idle']['sqs_calls_per_instance_per_min']:.1f}"]]), ""]
        if fl.get("baseline_model"):
            rows = []
            ours = {r["n"]: r for r in fl.get("sqs", [])}
            for mm in fl["baseline_model"]:
                o = ours.get(mm["n"])
                rows.append([str(mm["n"]), str(mm["m"]), ms(mm["latency"]["median"]), ms(mm["latency"]["p95"]), ms(mm["all_completed"]["median"]),
                             ms(mm["all_completed"]["p95"]), f"{mm['wrong_per_termination']:.0f}",
                             vs_lastcall(mm, o)])
            out += ["The baseline's behaviour for larger fleets, as a model (`baseline_model()` in `fleet.py`): each time a message "
                    "becomes visible, one of the N instances receives it at random; its owner (probability 1/N) completes it "
                    "(1.4 s: one measured pass), anyone else leaves it invisible for the visibility timeout (30 s, plus 0.5 s for "
                    "the emulator's 1 s long-poll step). Messages are taken as independent, which favours the baseline: on the "
                    "emulator one receive takes every visible message at once, so at most one of them completes per 30 s. "
                    "The measured fleet above is the check on the model: its first row (N = 10, M = 1) is the measured case.", "",
                    table(["N", "M", "each termination: median", "p95", "all M completed: median", "p95", "wrong receptions per termination",
                           "÷ lastcall (queue), all M: medians"], rows), ""]
    return "\n".join(out)


def vs_lastcall(model: dict, ours: dict | None) -> str:
    """The baseline model's median time until all M are completed over lastcall's (queue mode)."""
    if not ours:
        return "–"
    if ours.get("incomplete_rounds") or "median" not in ours["all_completed"]:
        cap = ours["rounds"][-1]["cap_s"]
        return f"< {ratio(model['all_completed']['median'], cap)} (lastcall: a round over {cap:.0f} s)"
    return ratio(model["all_completed"]["median"], ours["all_completed"]["median"])


def completed_cell(r: dict) -> str:
    done, started = r.get("terminations", r["m"] * len(r["rounds"])), r.get("terminations_started", r["m"] * len(r["rounds"]))
    cell = f"{done} of {started} ({len(r['rounds'])})"
    if done < started:
        cap = r["rounds"][-1]["cap_s"]
        cell += f" **{started - done} not within {cap:.0f} s**"
    return cell


def all_cell(r: dict, stat: str) -> str:
    if r.get("incomplete_rounds"):
        ok = r["all_completed"].get(stat)
        return (ms(ok) + ", " if ok is not None else "") + f"> {r['rounds'][-1]['cap_s']:.0f} s"
    return ms(r["all_completed"].get(stat))


def footprint_section(fp: dict) -> str:
    b = fp["binary"]
    out = ["## 3. Footprint", "",
           f"`bench/idle_footprint.py`. Binary: `ls -l target/release/lastcall` = **{b['bytes']:,} bytes ({b['mb']:.2f} MB, "
           f"{b['mib']:.2f} MiB)**; `file`: {'stripped' if b['stripped'] else 'NOT stripped'}.", ""]
    rows = []
    for m, r in fp["idle"].items():
        label = "queue (`[sqs]`, long poll 20 s)" if m == "sqs" else "IMDS (`[imds]`, poll 2 s)"
        rows.append([label, f"{r['rss_kib']['max'] / 1024:.1f} MiB", f"{r['vmhwm_kib'] / 1024:.1f} MiB", str(r["threads"]),
                     f"{r['cpu_s']:.2f} s in {r['seconds'] / 60:.0f} min", f"{r['cpu_s_per_hour']:.2f} s",
                     f"{r['aws_calls']} ({', '.join(f'{k} {v}' for k, v in r['by_action'].items()) or 'none'})"])
    out += [f"Idle `lastcall run`, both modes side by side on one emulator, from 2 s after start-up: RSS (`VmRSS` of "
            f"/proc/PID/status, sampled once a second over the first {fp['rss_seconds']} s; `VmHWM` at the end), CPU time "
            f"(utime + stime of /proc/PID/stat) over {fp['seconds'] / 60:.0f} min, and the AWS calls made meanwhile.", "",
            table(["mode", "RSS max", "peak RSS (VmHWM)", "threads", "CPU", "CPU per hour", "AWS calls while idle"], rows), ""]
    imds = fp.get("idle_imds_requests", {})
    if imds:
        out += [f"IMDS requests meanwhile (both daemons; only the IMDS one polls): {', '.join(f'`{k}` {v}' for k, v in imds.items())}.", ""]
    rows = []
    for m, r in fp["once"].items():
        label = "`lastcall once --wait 0s`, queue, empty" if m == "sqs" else "`lastcall once`, IMDS, in service"
        rows.append([label, str(r["wall"]["n"]), ms(r["wall"]["median"]), ms(r["wall"]["p95"]), ms(r["wall"]["max"]),
                     ms(r["time_v_wall"]["median"]), f"{r['max_rss_kib']['max'] / 1024:.1f} MiB",
                     ms(r["cpu"]["median"]) if r["cpu"]["median"] else "< 10 ms (below `time`'s resolution)"])
    out += ["`lastcall once` under `/usr/bin/time -v` (wall also timed by the harness, as `time` rounds to 10 ms):", "",
            table(["run", "n", "wall: median", "p95", "max", "wall per `time -v`: median", "max RSS", "CPU (user+sys): median"], rows), ""]
    return "\n".join(out)


def goals(lat: dict | None, fl: dict | None, fp: dict | None) -> list[list[str]]:
    rows = []

    def add(goal: str, value: str, ok: bool | None) -> None:
        rows.append([goal, value, "–" if ok is None else ("**met**" if ok else "**missed**")])

    if lat:
        m = {**lat["measured"], **lat["computed"]}
        if "sqs" in m:
            s = m["sqs"]["summary"]
            add("queue mode latency: median ≤ 0.25 s", f"median {ms(s['median'])}, p95 {ms(s['p95'])}", s["median"] <= 0.25)
        for mode, interval in (("imds-2s", 2.0), ("imds-200ms", 0.2)):
            if mode in m:
                s = m[mode]["summary"]
                add(f"IMDS mode, poll {ms(interval)}: within the poll interval + 0.1 s (every termination)",
                    f"median {ms(s['median'])}, p95 {ms(s['p95'])}, max {ms(s['max'])}", s["max"] <= interval + 0.1)
    if fl:
        for r in fl.get("sqs", []):
            if r["n"] == 100:
                if r.get("incomplete_rounds"):
                    add("fleet, queue: N = 100, M = 10 all completed within 5 s",
                        f"{r['terminations']} of {r['terminations_started']} completed within {r['rounds'][-1]['cap_s']:.0f} s", False)
                else:
                    add("fleet, queue: N = 100, M = 10 all completed within 5 s",
                        f"median {ms(r['all_completed']['median'])}, max {ms(r['all_completed']['max'])} over {len(r['rounds'])} rounds",
                        r["all_completed"]["max"] <= 5.0)
        for r in fl.get("imds", []):
            add(f"fleet, IMDS: AWS calls while idle = 0 (N = {r['n']})", f"{r['idle']['aws_calls']} in {r['idle']['seconds']:.0f} s", r["idle"]["aws_calls"] == 0)
    if fp:
        b = fp["binary"]
        add("stripped binary ≤ 12 MB", f"{b['mb']:.2f} MB ({b['mib']:.2f} MiB)", b["bytes"] <= 12_000_000 and b["stripped"])
        for m, r in fp["idle"].items():
            peak = max(r["vmhwm_kib"], r["rss_kib"]["max"])
            add(f"idle RSS of `lastcall run` ({'queue' if m == 'sqs' else 'IMDS'}) ≤ 10 MiB", f"peak {peak / 1024:.1f} MiB", peak <= 10 * 1024)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--seconds", type=float, default=0)
    args = ap.parse_args()
    lat, fl, fp = load("latency"), load("fleet"), load("footprint")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts = [
        "# lastcall benchmarks",
        "",
        f"Generated by `bench/run.sh{' --quick' if args.mode == 'quick' else ''}` on {when}"
        + (f", in {args.seconds / 60:.0f} min" if args.seconds else "") + (" (**quick run: tiny sizes, not the reference numbers**)" if args.mode == "quick" else "")
        + ". Everything runs on this machine against the local AWS emulator (`tests/emulator`, moto with lifecycle hooks and a "
        "fake IMDSv2 per instance); absolute times are the emulator's, not AWS's. Regenerate with `bench/run.sh` "
        "(about 40 min) or `bench/run.sh --quick` (about 4 min, tiny sizes).",
        "",
        "## Machine and versions",
        "",
        table(["", ""], [[k, v] for k, v in machine(args.lastcall)]),
        "",
    ]
    loads = [("latency", lat), ("fleet", fl), ("footprint", fp)]
    la = ", ".join(f"{n}: {d['loadavg_start'][0]:.1f} → {d['loadavg_end'][0]:.1f}" for n, d in loads if d)
    parts += [f"Load average (1 min) at the start and end of each benchmark: {la}. The benchmarks run one after another; "
              "the machine is shared, so other work on it shows up in these.", ""]
    parts += ["## Goals (issue #6)", "", table(["goal", "measured", ""], goals(lat, fl, fp)), ""]
    if lat:
        parts.append(latency_section(lat, []))
    if fl:
        parts.append(fleet_section(fl))
    if fp:
        parts.append(footprint_section(fp))
    parts += [
        "## Method notes",
        "",
        "- The emulator is `tests/emulator/emulator.py`, the one the tests use (moto with lifecycle hooks, warm pools and a fake "
        "IMDSv2 per instance). Two of its fidelity fixes matter here: its fake IMDS answers with TCP_NODELAY (Python's http.server "
        "sends headers and body separately, and Nagle's algorithm made every keep-alive IMDS read wait ~40 ms for a delayed ACK), "
        "and a released message, or one whose visibility timeout runs out, wakes the long polls waiting on its queue at once, as "
        "real SQS returns such a message promptly (moto's long polls otherwise notice it only on their own 1 s step).",
        "- Calls are counted by the emulator (`GET /calls` on its control server) per service and action, per client "
        "(User-Agent) and per access key id; each simulated instance has its own access key id.",
        "- A stopped daemon's long poll stays open inside moto until its 20 s run out, and would take (and hide for the "
        "visibility timeout) messages meant for others; between fleet rounds the harness waits for those polls to end. On a "
        "real instance the process ends with the instance.",
        "- The baseline script is `bench/baseline/asg-drain.sh` (bash, AWS CLI v1 from its own virtualenv "
        "`bench/.venv-awscli`, jq, curl for IMDSv2).",
        "",
    ]
    (BENCH / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {BENCH / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
