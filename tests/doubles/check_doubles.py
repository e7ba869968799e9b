#!/usr/bin/env python3
"""Self-test of the test doubles in this directory: tests/doubles/fluentd, fake_mackerel.py,
fake_nomad.py and fake_ecs_agent.py.

    python3 tests/doubles/check_doubles.py [-k NAME]... [-v]

Starts the doubles in temporary directories and checks their behaviour with real signals,
directory scans and HTTP calls. Scenarios run in parallel; exits 1 if any check fails.
"""

import argparse
import concurrent.futures
import http.client as httpclient
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
FLUENTD = os.path.join(HERE, "fluentd")
MACKEREL = os.path.join(HERE, "fake_mackerel.py")
NOMAD = os.path.join(HERE, "fake_nomad.py")
ECS_AGENT = os.path.join(HERE, "fake_ecs_agent.py")
CHUNK_RE = re.compile(r"^buffer\.([bq])([0-9a-f]{32})\.log$")
OUTPUT_KEYS = [
    "plugin_id", "plugin_category", "type", "config", "output_plugin", "buffer_queue_length",
    "buffer_timekeys", "buffer_total_queued_size", "retry_count", "emit_records", "emit_count",
    "write_count", "rollback_count", "slow_flush_count", "flush_time_count",
    "buffer_stage_length", "buffer_stage_byte_size", "buffer_queue_byte_size",
    "buffer_available_buffer_space_ratios", "retry",
]

VERBOSE = False
_lock = threading.Lock()
_checks = 0
_port_lock = threading.Lock()
_ports_taken = set()


class CheckFailed(Exception):
    pass


def check(cond, what):
    global _checks
    with _lock:
        _checks += 1
    if not cond:
        raise CheckFailed(what)
    if VERBOSE:
        print(f"    ok: {what}", flush=True)


def wait_for(pred, timeout, what, step=0.005):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise CheckFailed(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(step)


# --------------------------------------------------------------------------------------------
# process / file / http helpers

def free_ports(n=1):
    """A base port P with P..P+n-1 free (and not handed out to another scenario)."""
    with _port_lock:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
            s.close()
            if base + n > 65535 or any(p in _ports_taken for p in range(base, base + n)):
                continue
            ok = True
            for p in range(base, base + n):
                t = socket.socket()
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                finally:
                    t.close()
            if ok:
                _ports_taken.update(range(base, base + n))
                return base
    raise RuntimeError("no free ports")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        return []


def ppid_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if ppid_of(int(d)) == pid and alive(int(d)):
                    out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return sorted(out)


def chunk_files(root):
    """buffer.*.log files (not .meta) under root, recursively, as paths relative to root."""
    out = []
    for dirpath, _, files in os.walk(root):
        for n in files:
            if CHUNK_RE.match(n):
                out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def all_files(root):
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, n), root) for n in files]
    return sorted(out)


def size_of(root, rels):
    total = 0
    for r in rels:
        try:
            total += os.path.getsize(os.path.join(root, r))
        except FileNotFoundError:
            pass
    return total


def http(method, url, body=None, headers=None, timeout=5):
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status, rh = r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, rh = e.read(), e.code, dict(e.headers)
    try:
        return status, rh, json.loads(raw) if raw else None
    except ValueError:
        return status, rh, raw.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# fluentd double harness

class Fluentd:
    def __init__(self, name, *extra, tmp=None):
        self.tmp = tmp or tempfile.mkdtemp(prefix=f"fluentd-double-{name}-")
        self.pidfile = os.path.join(self.tmp, "fluentd.pid")
        self.buf = os.path.join(self.tmp, "buffer")
        self.log = os.path.join(self.tmp, "fluentd.log")
        self.extra = list(extra)
        self.sup = None
        self.seen = set()

    def launch(self):
        """Runs `fluentd -d PIDFILE …`; returns (exit code, seconds, pid file present at return)."""
        cmd = [FLUENTD, "-c", "/etc/fluent/fluentd.conf", "-d", self.pidfile,
               "--buffer-path", self.buf, "-o", self.log, "-v",
               "--exit-with", str(os.getpid()), "--max-lifetime", "120"] + self.extra
        t0 = time.monotonic()
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=10).returncode
        dt = time.monotonic() - t0
        return rc, dt, os.path.exists(self.pidfile)

    def wait_pid(self, timeout=3, not_pid=None):
        def read():
            try:
                with open(self.pidfile) as f:
                    s = f.read()
            except FileNotFoundError:
                return None
            if not re.fullmatch(r"\d+\n", s) or int(s) == not_pid:
                return None
            return s
        s = wait_for(read, timeout, "pid file with a new pid")
        self.sup = int(s)
        self.seen.add(self.sup)
        return s

    def workers(self):
        ws = children(self.sup) if self.sup else []
        self.seen.update(ws)
        return ws

    def log_text(self, path=None):
        try:
            with open(path or self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_running(self, n=1, timeout=5):
        wait_for(lambda: self.log_text().count("fluentd worker is now running") >= n, timeout,
                 f"{n}× 'fluentd worker is now running' in the log")
        self.workers()

    def signal(self, sig):
        os.kill(self.sup, sig)

    def stop(self, timeout=8):
        pids = [self.sup] + self.workers()
        self.signal(signal.SIGTERM)
        wait_for(lambda: not any(alive(p) for p in pids), timeout,
                 "supervisor and workers gone after SIGTERM", step=0.02)

    def cleanup(self):
        if self.sup is None:  # failed before the pid file was read: find the daemon anyway
            try:
                wait_for(lambda: os.path.exists(self.pidfile), 2, "pid file")
                with open(self.pidfile) as fh:
                    self.sup = int(fh.read().strip() or 0) or None
            except (CheckFailed, ValueError):
                pass
        if self.sup:
            self.seen.add(self.sup)
            self.workers()
        for p in sorted(self.seen):
            # only processes this harness started (pid-file supervisor and its workers)
            if alive(p) and any("doubles/fluentd" in a for a in cmdline(p)):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            wait_for(lambda: not any(alive(p) for p in self.seen), 3, "killed", step=0.02)
        except CheckFailed:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def monitor(port, oid=None, extra=""):
    q = f"?@id={oid}" if oid else ""
    if extra:
        q = (q + "&" if q else "?") + extra
    st, _, body = http("GET", f"http://127.0.0.1:{port}/api/plugins.json{q}", timeout=2)
    check(st == 200, f"monitor_agent answers 200 (got {st})")
    return body["plugins"]


def monitor_output(port, oid="out_file"):
    ps = monitor(port, oid)
    check(len(ps) == 1 and ps[0]["plugin_id"] == oid, f"?@id={oid} selects exactly that output")
    return ps[0]


# --------------------------------------------------------------------------------------------
# fluentd scenarios

def fluentd_basic():
    port = free_ports()
    f = Fluentd("basic", "--monitor-port", str(port))
    try:
        rc, dt, present = f.launch()
        check(rc == 0, "launcher exits 0")
        check(dt < 3, f"launcher returns at once ({dt:.3f}s)")
        check(not present, "pid file is not there yet when the launcher returns")
        t_ret = time.monotonic()
        s = f.wait_pid()
        check(time.monotonic() - t_ret < 1, "pid file appears shortly after the launcher returned")
        check(s == f"{f.sup}\n", "pid file holds 'PID\\n'")
        sup_cmd = cmdline(f.sup)
        check(any("fluentd" in a for a in sup_cmd), "supervisor cmdline contains 'fluentd'")
        check("--under-supervisor" not in sup_cmd, "pid file names the supervisor, not a worker")
        check(ppid_of(f.sup) != os.getpid(), "supervisor is daemonized (not our child)")
        check(os.getsid(f.sup) == f.sup, "supervisor leads its own session")
        ws = f.workers()
        check(len(ws) == 1, f"one worker process (got {ws})")
        wcmd = cmdline(ws[0])
        check(wcmd[-1] == "--under-supervisor" and any("fluentd" in a for a in wcmd),
              "worker cmdline contains 'fluentd' and ends in --under-supervisor")
        f.wait_running()
        files = all_files(f.buf)
        chunks = chunk_files(f.buf)
        check(len(chunks) == 3 and all(os.sep not in c and c.startswith("buffer.b") for c in chunks),
              f"3 staged buffer.b<hex>.log chunks directly in the buffer dir ({chunks})")
        check(files == sorted(chunks + [c + ".meta" for c in chunks]), "each chunk has its .meta")
        staged = size_of(f.buf, chunks)

        plugins = monitor(port)
        check(len(plugins) == 2, "plugins.json lists monitor_agent and the output")
        inp = [p for p in plugins if p["plugin_category"] == "input"][0]
        check(inp["type"] == "monitor_agent" and inp["output_plugin"] is False
              and "buffer_total_queued_size" not in inp and inp["retry_count"] is None,
              "monitor_agent input entry has no buffer fields")
        out = monitor_output(port)
        check(all(k in out for k in OUTPUT_KEYS), f"output entry has every field ({sorted(out)})")
        check(list(out)[:5] == ["plugin_id", "plugin_category", "type", "config", "output_plugin"],
              "field order as fluentd renders it")
        check(out["type"] == "file" and out["output_plugin"] is True and out["retry"] == {}
              and out["retry_count"] == 0 and out["buffer_timekeys"] == [],
              "output entry: type file, no retry")
        check(out["buffer_stage_length"] == 3 and out["buffer_queue_length"] == 0
              and out["buffer_stage_byte_size"] == staged
              and out["buffer_total_queued_size"] == staged,
              "stage length/bytes and total match the chunk files")
        check(monitor(port, "nope") == [], "?@id=unknown gives an empty list")
        check("config" not in monitor(port, "out_file", "with_config=false")[0],
              "with_config=false drops config")
        st, _, _ = http("GET", f"http://127.0.0.1:{port}/api/nope")
        check(st == 404, "unknown monitor path is 404")
        st, _, cfg = http("GET", f"http://127.0.0.1:{port}/api/config.json")
        check(st == 200 and cfg["pid"] == ws[0] and cfg["ppid"] == f.sup,
              "/api/config.json is served by the worker")

        # SIGUSR1: watch the files, the monitor and the log together
        t0 = time.monotonic()
        f.signal(signal.SIGUSR1)
        samples = []
        flushed_logged_with_files = None
        while True:
            o = monitor_output(port)        # monitor first, then the directory
            fs = chunk_files(f.buf)
            t = time.monotonic() - t0
            samples.append((t, fs, o))
            if flushed_logged_with_files is None and "flushing thread: flushed" in f.log_text():
                flushed_logged_with_files = bool(fs)
            if o["buffer_total_queued_size"] == 0:
                check(fs == [], "total_queued_size is 0 only once no chunk file is left")
                break
            check(t < 6, "flush finishes within 6 s")
            time.sleep(0.005)
        t_zero = samples[-1][0]
        t_empty = next(t for t, fs, _ in samples if fs == [])
        first_q = next((t for t, fs, _ in samples if any(c.startswith("buffer.q") for c in fs)), None)
        check(first_q is not None and first_q < 0.3, f"q chunks appear right after SIGUSR1 ({first_q})")
        check(all(not any(c.startswith("buffer.b") for c in fs)
                  for t, fs, _ in samples if t > 0.3), "no staged chunk left after enqueue")
        counts = [len(fs) for _, fs, _ in samples]
        check(all(a >= b for a, b in zip(counts, counts[1:])), "chunk count only goes down")
        drops = [samples[i][0] for i in range(1, len(samples)) if counts[i] < counts[i - 1]]
        check(len(drops) == 3 and all(counts[i - 1] - counts[i] == 1
                                      for i in range(1, len(samples)) if counts[i] < counts[i - 1]),
              f"chunks are deleted one at a time (drops at {[round(d, 2) for d in drops]})")
        check(all(b - a > 0.2 for a, b in zip(drops, drops[1:])),
              "each chunk write takes ~chunk-seconds (0.3 s)")
        check(0.8 <= t_empty <= 3.0, f"buffer empties after ~chunks×chunk-seconds ({t_empty:.2f}s)")
        check(any(o["buffer_queue_length"] == 0 and o["buffer_stage_length"] == 0
                  and o["buffer_total_queued_size"] > 0 and fs for _, fs, o in samples),
              "a chunk being written is in neither queue nor stage length but still in the total")
        check(all(o["buffer_total_queued_size"] > 0 for _, fs, o in samples if fs),
              "total_queued_size > 0 whenever a chunk file was still there")
        check(t_zero >= t_empty, "monitor reaches 0 only after the last chunk is gone")
        check(flushed_logged_with_files is True,
              "'flushing thread: flushed' is logged while a chunk is still being written")
        log = f.log_text()
        check("[info]: #0 force flushing buffered events" in log, "info 'force flushing' logged")
        check("[debug]: fluentd supervisor process get SIGUSR1" in log, "supervisor got SIGUSR1")
        out = monitor_output(port)
        check(out["write_count"] == 3 and out["buffer_queue_byte_size"] == 0,
              "write_count 3 after the flush")
        check(all_files(f.buf) == [], "metas are gone too")

        # SIGTERM: everything stops; the pid file stays
        sup = f.sup
        f.stop()
        check(open(f.pidfile).read() == f"{sup}\n", "pid file is left behind (stale) after stop")
        check("Worker 0 finished with status 0" in f.log_text(), "worker stopped cleanly")
    finally:
        f.cleanup()


def fluentd_sigterm_keeps_chunks_and_resume():
    f = Fluentd("resume")
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running()
        before = chunk_files(f.buf)
        check(len(before) == 3, "3 chunks")
        first = f.sup
        f.stop()
        check(chunk_files(f.buf) == before, "SIGTERM leaves the file chunks on disk (no flush)")
        check(len(all_files(f.buf)) == 6, "and their .meta files")
        check(open(f.pidfile).read() == f"{first}\n", "stale pid file left with the old pid")
        # restart on the same buffer: chunks are resumed, not topped up
        check(f.launch()[0] == 0, "relaunch exits 0")
        f.wait_pid(not_pid=first)
        check(f.sup != first, "pid file rewritten with the new supervisor")
        f.wait_running(n=2)
        check(chunk_files(f.buf) == before, "restart resumes the same 3 chunks")
        # G6: SIGUSR1 reopens the log file
        os.rename(f.log, f.log + ".1")
        f.signal(signal.SIGUSR1)
        wait_for(lambda: chunk_files(f.buf) == [], 4, "resumed chunks flushed by SIGUSR1")
        wait_for(lambda: "flushing all buffer forcedly" in f.log_text(), 2,
                 "log reopened at its path after SIGUSR1 (G6)")
        f.stop()
    finally:
        f.cleanup()


def fluentd_retry():
    port = free_ports()
    f = Fluentd("retry", "--retry", "--monitor-port", str(port))
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running()
        out = monitor_output(port)
        check(out["retry_count"] > 0 and set(out["retry"]) == {"start", "steps", "next_time"},
              f"retry state visible: retry_count {out['retry_count']}, retry {out['retry']}")
        check(out["buffer_queue_length"] == 1 and out["buffer_stage_length"] == 2,
              "the failed chunk is queued, the rest staged")
        files = chunk_files(f.buf)
        total = out["buffer_total_queued_size"]
        check(total == size_of(f.buf, files), "total matches the files")
        f.signal(signal.SIGUSR1)
        wait_for(lambda: "flushing thread: flushed" in f.log_text(), 2,
                 "'flushing thread: flushed' logged although nothing was written")
        time.sleep(1.2)  # > chunks × chunk-seconds
        after = chunk_files(f.buf)
        check(len(after) == 3 and sorted(a[8:] for a in after) == sorted(b[8:] for b in files),
              "SIGUSR1 in retry state writes/deletes nothing (G4)")
        out = monitor_output(port)
        check(out["buffer_total_queued_size"] == total and out["retry_count"] > 0,
              "total_queued_size unchanged; still retrying")
        check(all(a.startswith("buffer.q") for a in after) and out["buffer_queue_length"] == 3,
              "enqueue_all still renamed the staged chunks to q (force_flush enqueues first)")
        f.stop()
        check(len(chunk_files(f.buf)) == 3, "chunks survive the stop")
    finally:
        f.cleanup()


def fluentd_startup_race():
    f = Fluentd("race", "--worker-startup", "1.0")
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        ws = f.workers()
        check(len(ws) == 1, "the worker exists when the pid file appears")
        f.signal(signal.SIGUSR1)  # a few ms after the pid file: the worker has no trap yet
        wait_for(lambda: "Worker 0 exited unexpectedly with signal SIGUSR1" in f.log_text(), 3,
                 "supervisor logs the worker killed by SIGUSR1 (G2)")
        check(alive(f.sup), "the supervisor survives (its trap was in place)")
        wait_for(lambda: [w for w in f.workers() if w != ws[0]
                          and cmdline(w)[-1:] == ["--under-supervisor"]], 3,
                 "a new worker (cmdline ending in --under-supervisor) is started")
        check(not alive(ws[0]), "the first worker is gone")
        f.wait_running(timeout=5)
        check(len(chunk_files(f.buf)) == 3 and all(c.startswith("buffer.b")
                                                   for c in chunk_files(f.buf)),
              "file chunks survived the killed worker, still staged")
        f.signal(signal.SIGUSR1)
        wait_for(lambda: chunk_files(f.buf) == [], 4, "after startup SIGUSR1 flushes normally")
        check(f.log_text().count("exited unexpectedly") == 1, "no further kill")
        f.stop()
    finally:
        f.cleanup()


def fluentd_multi_worker():
    port = free_ports(2)
    f = Fluentd("multi", "--workers", "2", "--chunks", "2", "--monitor-port", str(port))
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running(n=2)
        ws = f.workers()
        check(len(ws) == 2 and all(cmdline(w)[-1] == "--under-supervisor" for w in ws),
              "two worker processes with --under-supervisor")
        cs = chunk_files(f.buf)
        check(sorted({os.path.dirname(c) for c in cs}) == ["worker0", "worker1"] and len(cs) == 4,
              f"chunks under worker0/ and worker1/, 2 each ({cs})")
        pids = set()
        for i in range(2):
            _, _, cfg = http("GET", f"http://127.0.0.1:{port + i}/api/config.json")
            pids.add(cfg["pid"])
            check(monitor_output(port + i)["buffer_stage_length"] == 2,
                  f"worker{i}'s monitor_agent on port P+{i} shows its 2 chunks")
        check(pids == set(ws), "monitor ports P and P+1 belong to the two workers")
        f.signal(signal.SIGUSR1)
        wait_for(lambda: chunk_files(f.buf) == [], 4, "both workers flush on one SIGUSR1")
        wait_for(lambda: all(monitor_output(port + i)["buffer_total_queued_size"] == 0
                             for i in range(2)), 2, "both monitors reach 0")
        f.stop()
    finally:
        f.cleanup()


def fluentd_multi_output():
    port = free_ports()
    f = Fluentd("outputs", "--output-id", "out_a", "--output-id", "out_b", "--retry", "out_b",
                "--chunks", "2", "--monitor-port", str(port))
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running()
        cs = chunk_files(f.buf)
        check(sorted({os.path.dirname(c) for c in cs}) == ["out_a", "out_b"] and len(cs) == 4,
              f"one buffer dir per output ({cs})")
        check(len(monitor(port)) == 3, "monitor_agent + 2 outputs")
        check(monitor_output(port, "out_b")["retry_count"] > 0, "out_b in retry")
        check(monitor_output(port, "out_a")["retry_count"] == 0, "out_a healthy")
        f.signal(signal.SIGUSR1)
        wait_for(lambda: not any(c.startswith("out_a") for c in chunk_files(f.buf)), 3,
                 "out_a flushed")
        time.sleep(0.4)
        check(len([c for c in chunk_files(f.buf) if c.startswith("out_b")]) == 2,
              "out_b (retrying) keeps its chunks")
        check(monitor_output(port, "out_a")["buffer_total_queued_size"] == 0
              and monitor_output(port, "out_b")["buffer_total_queued_size"] > 0,
              "per-output totals")
        f.stop()
    finally:
        f.cleanup()


def fluentd_no_orphans():
    f = Fluentd("orphans", "--workers", "2")
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running(n=2)
        ws = f.workers()
        check(len(ws) == 2, "two workers")
        os.kill(f.sup, signal.SIGKILL)
        wait_for(lambda: not any(alive(w) for w in ws), 3, "workers exit when the supervisor dies",
                 step=0.02)
        check(os.path.exists(f.pidfile), "pid file stays (stale)")
    finally:
        f.cleanup()


def fluentd_rpc():
    rpc = free_ports()
    f = Fluentd("rpc", "--rpc-port", str(rpc))
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        f.wait_running()
        t0 = time.monotonic()
        st, _, body = http("GET", f"http://127.0.0.1:{rpc}/api/plugins.flushBuffers")
        dt = time.monotonic() - t0
        check(st == 200 and body == {"ok": True}, "RPC flushBuffers → {\"ok\":true}")
        check(dt < 0.25 and len(chunk_files(f.buf)) == 3,
              f"RPC returns before the flush is done ({dt * 1000:.0f} ms)")
        wait_for(lambda: chunk_files(f.buf) == [], 4, "RPC flush empties the buffer")
        st, _, _ = http("GET", f"http://127.0.0.1:{rpc}/api/nope")
        check(st == 404, "unknown RPC path is 404")
        pids = [f.sup] + f.workers()
        st, _, body = http("GET", f"http://127.0.0.1:{rpc}/api/processes.killWorkers")
        check(st == 200 and body == {"ok": True}, "RPC killWorkers → ok")
        wait_for(lambda: not any(alive(p) for p in pids), 5, "killWorkers stops fluentd")
    finally:
        f.cleanup()


def fluentd_no_supervisor():
    f = Fluentd("nosup", "--no-supervisor")
    try:
        check(f.launch()[0] == 0, "launcher exits 0")
        f.wait_pid()
        check(f.workers() == [], "--no-supervisor: a single process")
        check("--under-supervisor" not in cmdline(f.sup), "it is not a worker")
        f.wait_running()
        f.signal(signal.SIGUSR1)
        wait_for(lambda: chunk_files(f.buf) == [], 4, "it handles SIGUSR1 itself")
        f.stop()
    finally:
        f.cleanup()


# --------------------------------------------------------------------------------------------
# fake Mackerel

def mackerel():
    p = subprocess.Popen([sys.executable, MACKEREL, "--port", "0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        base, ctl = info["url"], info["control"]
        check(re.fullmatch(r"http://127\.0\.0\.1:\d+", base) and ctl == base + "/_control",
              "ready line has url and control")
        W, R = "write-key-123", "read-key-456"
        check(http("POST", ctl + "/keys", {"key": W, "write": True})[0] == 200, "register write key")
        check(http("POST", ctl + "/keys", {"key": R, "write": False})[0] == 200, "register read key")

        def api(method, path, body=None, key=W, raw=None, ctype="application/json"):
            hdrs = {} if key is None else {"X-Api-Key": key}
            if raw is not None:
                hdrs["Content-Type"] = ctype
                return http(method, base + path, raw, hdrs)
            return http(method, base + path, body, hdrs)

        # auth
        st, _, b = api("GET", "/api/v0/org", key=None)
        check(st == 401 and isinstance(b["error"]["message"], str), "no key → 401 with error.message")
        check(api("GET", "/api/v0/org", key="nope")[0] == 401, "unknown key → 401")
        st, _, b = api("GET", "/api/v0/org", key=R)
        check(st == 200 and b == {"name": "lastcall-test"}, "GET /api/v0/org with a read key")

        # hosts
        def mk(**kw):
            st, _, b = http("POST", ctl + "/hosts", kw)
            check(st == 200 and re.fullmatch(r"[0-9A-Za-z]{11}", b["id"]), f"host id {b}")
            return b["id"]
        iid = "i-0123456789abcdef0.ec2.amazonaws.com"
        h1 = mk(name="ip-10-0-0-1", customIdentifier=iid, roles={"svc": ["web"]})
        h2 = mk(name="ip-10-0-0-2", customIdentifier="i-2.ec2.amazonaws.com", status="standby")
        h3 = mk(name="ip-10-0-0-3", customIdentifier="i-3.ec2.amazonaws.com", status="maintenance")
        h4 = mk(name="ip-10-0-0-4")
        st, _, b = api("GET", "/api/v0/hosts", key=R)
        ids = [h["id"] for h in b["hosts"]]
        check(st == 200 and set(ids) == {h1, h2, h4}, "list defaults to working + standby")
        host = [h for h in b["hosts"] if h["id"] == h1][0]
        check(all(k in host for k in ("id", "name", "customIdentifier", "status", "isRetired",
                                      "roles", "meta", "interfaces", "createdAt", "size", "memo"))
              and host["isRetired"] is False and "retiredAt" not in host, "host object shape")
        st, _, b = api("GET", "/api/v0/hosts?status=maintenance&status=poweroff", key=R)
        check([h["id"] for h in b["hosts"]] == [h3], "status filter (repeatable)")
        st, _, b = api("GET", "/api/v0/hosts.json?customIdentifier=" + iid, key=R)
        check([h["id"] for h in b["hosts"]] == [h1], "customIdentifier filter, /hosts.json alias")
        st, _, b = api("GET", "/api/v0/hosts?service=svc&role=web", key=R)
        check([h["id"] for h in b["hosts"]] == [h1], "service/role filter")
        st, _, b = api("GET", "/api/v0/hosts?role=nope", key=R)
        check(len(b["hosts"]) == 3, "role is ignored without service")
        st, _, b = api("GET", "/api/v0/hosts-by-custom-identifier/" +
                       urllib.request.quote(iid, safe=""), key=R)
        check(st == 200 and b["host"]["id"] == h1, "lookup by custom identifier")
        st, _, b = api("GET", "/api/v0/hosts-by-custom-identifier/" + iid.upper(), key=R)
        check(st == 404 and b["error"]["message"] == "Host Not Found.", "lookup is case-sensitive")
        st, _, b = api("GET", "/api/v0/hosts-by-custom-identifier/" + iid.upper() +
                       "?caseInsensitive=true", key=R)
        check(st == 200 and b["host"]["id"] == h1, "caseInsensitive=true")
        check(api("GET", "/api/v0/hosts/" + h1, key=R)[0] == 200, "GET host by id")
        check(api("GET", "/api/v0/hosts/XXXXXXXXXXX", key=R)[0] == 404, "unknown id → 404")

        # retire
        st, _, b = api("POST", f"/api/v0/hosts/{h1}/retire", {}, key=R)
        check(st == 403 and "permission" in b["error"]["message"].lower(), "read-only key → 403")
        st, _, b = api("POST", f"/api/v0/hosts/{h1}/retire", raw=b"{not json")
        check(st == 400, "bad JSON → 400")
        st, _, b = api("POST", "/api/v0/hosts/XXXXXXXXXXX/retire", {})
        check(st == 404 and b == {"error": {"message": "Host Not Found."}}, "retire unknown → 404")
        st, _, b = api("POST", f"/api/v0/hosts/{h1}/retire", {})
        check(st == 200 and b == {"success": True}, "retire → {\"success\":true}")
        st, _, b = api("GET", "/api/v0/hosts/" + h1, key=R)
        check(st == 200 and b["host"]["isRetired"] is True and isinstance(b["host"]["retiredAt"], int),
              "retired host still readable by id, isRetired true")
        st, _, b = api("GET", "/api/v0/hosts-by-custom-identifier/" + iid, key=R)
        check(st == 404, "retired host no longer found by custom identifier")
        check(h1 not in [h["id"] for h in api("GET", "/api/v0/hosts", key=R)[2]["hosts"]],
              "retired host not listed")
        st, _, b = api("POST", f"/api/v0/hosts/{h1}/retire", {})
        check(st == 404, "retiring again → 404")
        st, _, b = api("POST", f"/api/v0/hosts/{h2}/retire", raw=b"null")
        check(st == 200, "body null (mackerel-client-go) accepted")

        # bulk retire
        st, _, b = api("POST", "/api/v0/hosts/bulk-retire", {"ids": [h3] * 31})
        check(st == 400, "bulk-retire with 31 ids → 400")
        st, _, b = api("POST", "/api/v0/hosts/bulk-retire", {"ids": [h3, "XXXXXXXXXXX"]})
        check(st == 404, "bulk-retire with an unknown id → 404")
        check(api("POST", "/api/v0/hosts/bulk-retire", {"ids": [h3]}, key=R)[0] == 403,
              "bulk-retire with read key → 403")
        st, _, b = api("POST", "/api/v0/hosts/bulk-retire", {"ids": [h3, h4]})
        check(st == 200 and b == {"success": True}, "bulk-retire → success")
        _, _, allh = http("GET", ctl + "/hosts")
        check({h["id"]: h["isRetired"] for h in allh} == {h1: True, h2: True, h3: True, h4: True},
              "control lists all hosts with isRetired")

        # faults
        h5 = mk(name="ip-10-0-0-5", customIdentifier="i-5.ec2.amazonaws.com")
        check(http("POST", ctl + "/faults",
                   {"path_prefix": "/api/v0/hosts/", "status": 503, "count": 2})[0] == 200,
              "fault registered")
        st1 = api("POST", f"/api/v0/hosts/{h5}/retire", {})[0]
        st2 = api("GET", f"/api/v0/hosts/{h5}", key=R)[0]
        st3, _, b3 = api("POST", f"/api/v0/hosts/{h5}/retire", {})
        check((st1, st2, st3) == (503, 503, 200), f"two 503s then success ({st1},{st2},{st3})")
        http("POST", ctl + "/faults", {"path_prefix": "/api/v0/org", "status": 429, "count": 1})
        st, hd, b = api("GET", "/api/v0/org", key=R)
        check(st == 429 and hd.get("Retry-After") == "1" and "message" in b["error"],
              "429 with Retry-After: 1")
        check(api("GET", "/api/v0/org", key=R)[0] == 200, "fault count exhausted")
        http("POST", ctl + "/faults", {"path_prefix": "/api/v0/org", "delay_seconds": 0.3})
        t0 = time.monotonic()
        check(api("GET", "/api/v0/org", key=R)[0] == 200 and time.monotonic() - t0 >= 0.3,
              "delay-only fault delays a normal answer")

        # request log
        _, _, reqs = http("GET", ctl + "/requests")
        check(len(reqs) > 20 and all({"method", "path", "api_key_present", "body"} <= set(r)
                                     for r in reqs), "request log entries")
        check(W not in json.dumps(reqs) and R not in json.dumps(reqs), "keys never echoed")
        check(any(not r["api_key_present"] for r in reqs), "api_key_present false recorded")
        rr = [r for r in reqs if r["path"] == f"/api/v0/hosts/{h5}/retire"]
        check(len(rr) == 2 and rr[-1]["json"] == {} and rr[-1]["content_type"] == "application/json"
              and [r["status"] for r in rr] == [503, 200], "retire requests recorded with status")

        # exits at stdin EOF
        p.stdin.close()
        p.wait(timeout=3)
        check(p.returncode == 0, "exits 0 at stdin EOF")

        # and on SIGTERM
        q = subprocess.Popen([sys.executable, MACKEREL, "--port", "0"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        q.stdout.readline()
        q.send_signal(signal.SIGTERM)
        q.wait(timeout=3)
        check(q.returncode == 0, "exits on SIGTERM")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------------------------
# fake Nomad and fake ECS agent

class Double:
    """A double started like the Rust tests start it: stdin piped, ready line on stdout."""

    def __init__(self, script, *args):
        self.p = subprocess.Popen([sys.executable, script, "--port", "0", *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        info = json.loads(self.p.stdout.readline())
        self.base, self.ctl = info["url"], info["control"]
        check(re.fullmatch(r"http://127\.0\.0\.1:\d+", self.base)
              and self.ctl == self.base + "/_control", "ready line has url and control")

    def get(self, path, headers=None, timeout=5):
        return http("GET", self.base + path, headers=headers, timeout=timeout)

    def control(self, method, path, body=None):
        st, _, b = http(method, self.ctl + path, body)
        check(st == 200, f"control {method} {path} → 200 (got {st}: {b})")
        return b

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


NODE_KEYS = {"ID", "Name", "Datacenter", "Status", "SchedulingEligibility", "DrainStrategy",
             "Drain", "LastDrain", "ModifyIndex", "CreateIndex", "Events", "Attributes"}
ALLOC_KEYS = {"ID", "Name", "Namespace", "NodeID", "JobID", "TaskGroup", "DesiredStatus",
              "DesiredDescription", "DesiredTransition", "ClientStatus", "CreateIndex",
              "ModifyIndex", "Job"}
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"


def rfc3339_ns(s):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", s)
    secs = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return int(secs) * 10**9 + int((m.group(2) or "0").ljust(9, "0"))


def nomad_node_id(d, headers=None):
    st, _, b = d.get("/v1/agent/self", headers)
    check(st == 200, f"agent/self → 200 (got {st})")
    return b["stats"]["client"]["node_id"]


def nomad_drain(d, node, spec, headers=None, method="POST", **extra):
    body = {"DrainSpec": spec, **extra}
    return http(method, f"{d.base}/v1/node/{node}/drain", body, headers)


def nomad_node(d, node, headers=None):
    st, h, b = d.get(f"/v1/node/{node}", headers)
    check(st == 200, f"GET node → 200 (got {st})")
    return b, int(h["X-Nomad-Index"])


def nomad_allocs(d, node, headers=None):
    st, h, b = d.get(f"/v1/node/{node}/allocations", headers)
    check(st == 200 and isinstance(b, list), f"GET allocations → 200 array (got {st})")
    return {a["JobID"]: a for a in b}


def nomad_wait_drained(d, node, timeout):
    """Polls until the node's DrainStrategy is null; returns the node."""
    def drained():
        n, _ = nomad_node(d, node)
        return n if n["DrainStrategy"] is None else None
    return wait_for(drained, timeout, "drain complete (DrainStrategy null)", step=0.02)


def nomad_basic():
    d = Double(NOMAD, "--instance-id", "i-0123456789abcdef0")
    try:
        st, h, me = d.get("/v1/agent/self")
        check(st == 200 and {"config", "member", "stats"} <= set(me), "agent/self shape")
        node = me["stats"]["client"]["node_id"]
        check(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", node),
              "stats.client.node_id is a UUID")
        check("X-Nomad-Index" not in h, "agent/self is not a blocking endpoint (no index)")
        n, idx = nomad_node(d, node)
        check(NODE_KEYS <= set(n), f"node has the documented fields ({sorted(NODE_KEYS - set(n))})")
        check(n["ID"] == node and n["Status"] == "ready" and n["SchedulingEligibility"] == "eligible"
              and n["DrainStrategy"] is None and n["Drain"] is False and n["LastDrain"] is None,
              "fresh node: ready, eligible, no drain")
        check(idx == n["ModifyIndex"], "X-Nomad-Index is the node's ModifyIndex")
        check(n["Attributes"]["unique.platform.aws.instance-id"] == "i-0123456789abcdef0",
              "--instance-id shows as the env_aws attribute")
        st, h, b = d.get("/v1/node/00000000-0000-0000-0000-000000000000")
        check(st == 404 and b == "node not found" and "text/plain" in h["Content-Type"],
              "unknown node → 404 'node not found' (plain text)")
        st, _, b = d.get("/v1/node/00000000-0000-0000-0000-000000000000/allocations")
        check(st == 200 and b == [], "allocations of an unknown node → []")
        check(d.get(f"/v1/node/{node}/allocations")[2] == [], "no allocations yet")

        # drain request validation
        st, _, b = http("POST", f"{d.base}/v1/node/{node}/drain", b"")
        check(st == 400 and b == "Request body is empty", "empty drain body → 400")
        st, _, b = http("POST", f"{d.base}/v1/node/{node}/drain", b"{nope")
        check(st == 400 and "invalid character" in b, f"malformed JSON → 400 ({b})")
        st, _, b = nomad_drain(d, node, {"Deadline": "1h"})
        check(st == 400 and "time.Duration" in b, "Deadline as a string → 400")
        st, _, b = nomad_drain(d, "00000000-0000-0000-0000-000000000000", {"Deadline": -1})
        check(st == 500 and b == "node not found", "drain of an unknown node → 500 'node not found'")
        st, _, b = http("GET", f"{d.base}/v1/node/{node}/drain")
        check(st == 405 and b == "Invalid method", "GET drain → 405")

        # a drain with no allocations completes asynchronously
        t0 = time.monotonic()
        st, h, r = nomad_drain(d, node, {"Deadline": 3600 * 10**9, "IgnoreSystemJobs": False},
                               Meta={"message": "lastcall"})
        check(st == 200 and set(r) == {"EvalCreateIndex", "EvalIDs", "Index", "NodeModifyIndex"}
              and r["Index"] == r["NodeModifyIndex"] == int(h["X-Nomad-Index"]),
              f"drain answer shape ({r})")
        n, idx = nomad_node(d, node)
        ds = n["DrainStrategy"]
        check(ds is not None and n["Drain"] is True and n["SchedulingEligibility"] == "ineligible",
              "right after the call the node is draining and ineligible (not yet complete)")
        check(set(ds) == {"Deadline", "IgnoreSystemJobs", "ForceDeadline", "StartedAt"}
              and ds["Deadline"] == 3600 * 10**9 and re.fullmatch(RFC3339, ds["ForceDeadline"]),
              f"DrainStrategy is rendered with DrainSpec inlined ({ds})")
        fd = rfc3339_ns(ds["ForceDeadline"]) - rfc3339_ns(ds["StartedAt"])
        check(abs(fd - 3600 * 10**9) < 10**9, "ForceDeadline = now + Deadline")
        ld = n["LastDrain"]
        check(ld["Status"] == "draining" and ld["Meta"] == {"message": "lastcall"}
              and ld["AccessorID"] == "token:acls-disabled", f"LastDrain while draining ({ld})")
        # blocking query on the node returns when the drain completes
        st, h, n2 = d.get(f"/v1/node/{node}?index={idx}&wait=5s")
        dt = time.monotonic() - t0
        check(st == 200 and n2["DrainStrategy"] is None and int(h["X-Nomad-Index"]) > idx,
              "blocking query returns on the change")
        check(0.15 <= dt < 1.5, f"an empty drain completes after ~0.2 s ({dt:.2f}s)")
        check(n2["LastDrain"]["Status"] == "complete" and n2["SchedulingEligibility"] == "ineligible"
              and n2["Drain"] is False, "complete: DrainStrategy null, node stays ineligible")
        check([e["Message"] for e in n2["Events"]][-2:] ==
              ["Node drain strategy set", "Node drain complete"], "node events")

        # service and batch allocations
        web = d.control("POST", "/allocs", {"job": "web", "stop_seconds": 0.3})["id"]
        d.control("POST", "/allocs", {"job": "report", "type": "batch", "stop_seconds": 0.2})
        al = nomad_allocs(d, node)
        check(ALLOC_KEYS <= set(al["web"]),
              f"allocation fields ({sorted(ALLOC_KEYS - set(al['web']))})")
        check(al["web"]["ID"] == web and al["web"]["Job"]["Type"] == "service"
              and al["report"]["Job"]["Type"] == "batch" and "JobType" not in al["web"]
              and al["web"]["Name"] == "web.web[0]" and al["web"]["NodeID"] == node,
              "Job embedded with its Type; no JobType on a full allocation")
        check(al["web"]["DesiredStatus"] == "run" and al["web"]["ClientStatus"] == "running",
              "allocations run")
        _, h, _ = d.get(f"/v1/node/{node}/allocations")
        aidx = int(h["X-Nomad-Index"])
        check(aidx == max(a["ModifyIndex"] for a in al.values()), "allocations index = max ModifyIndex")
        t0 = time.monotonic()
        st, _, _ = nomad_drain(d, node, {"Deadline": 60 * 10**9}, method="PUT")
        check(st == 200, "PUT drain accepted too")
        seen = []
        while True:
            st, h, b = d.get(f"/v1/node/{node}/allocations?index={aidx}&wait=2s")
            aidx = int(h["X-Nomad-Index"])
            al = {a["JobID"]: a for a in b}
            seen.append((time.monotonic() - t0, al))
            if all(a["ClientStatus"] == "complete" for a in al.values()):
                break
            check(time.monotonic() - t0 < 3, "allocations stop within 3 s")
        # (the ~20 ms between DesiredTransition.Migrate and DesiredStatus stop is not asserted:
        # a loaded machine can merge both into one blocking-query answer)
        check(any(a["web"]["DesiredStatus"] == "stop" and a["web"]["ClientStatus"] == "running"
                  for _, a in seen), "desired stop while still running")
        check(al["web"]["DesiredTransition"]["Migrate"] is True, "service alloc was migrated")
        web_done = next(t for t, a in seen if a["web"]["ClientStatus"] == "complete")
        check(0.3 <= web_done < 1.5,
              f"service alloc completes after its stop_seconds ({web_done:.2f}s)")
        check(al["web"]["DesiredDescription"] == "alloc is being migrated", "DesiredDescription")
        check(al["report"]["DesiredStatus"] == "run"
              and al["report"]["DesiredTransition"]["Migrate"] is None,
              "batch alloc is not migrated: it runs to completion")
        n = nomad_wait_drained(d, node, 2)
        check(n["LastDrain"]["Status"] == "complete", "LastDrain complete")
        st_ = d.control("GET", "/state")
        check(st_["drain_request_count"] == 6 and st_["drain_requests"][-1]["method"] == "PUT"
              and st_["drain_requests"][-1]["json"] == {"DrainSpec": {"Deadline": 60 * 10**9}},
              f"control state counts drain requests ({st_['drain_request_count']})")
        reqs = d.control("GET", "/requests")
        check(all(r["token_present"] is False for r in reqs) and
              any(r["path"].endswith("/drain") and r["status"] == 400 for r in reqs),
              "requests recorded with token_present and status")
        # wait timeout and bad query parameters
        _, h, _ = d.get(f"/v1/node/{node}")
        t0 = time.monotonic()
        st, h2, _ = d.get(f"/v1/node/{node}?index={h['X-Nomad-Index']}&wait=300ms")
        dt = time.monotonic() - t0
        check(st == 200 and h2["X-Nomad-Index"] == h["X-Nomad-Index"] and 0.25 <= dt < 1,
              f"blocking query without change returns after wait ({dt:.2f}s)")
        check(d.get(f"/v1/node/{node}?index=1&wait=5")[:3:2] == (400, "Invalid wait time"),
              "wait without unit → 400 'Invalid wait time'")
        check(d.get(f"/v1/node/{node}?index=x")[:3:2] == (400, "Invalid index"), "bad index → 400")
        # reset
        r = d.control("POST", "/reset")
        check(r["node_id"] != node and nomad_node_id(d) == r["node_id"], "reset gives a new node id")
        check(d.get(f"/v1/node/{node}")[0] == 404, "the old node is gone")
        check(d.close() == 0, "exits 0 at stdin EOF")
        q = subprocess.Popen([sys.executable, NOMAD, "--port", "0"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        q.stdout.readline()
        q.send_signal(signal.SIGTERM)
        check(q.wait(timeout=3) == 0, "exits 0 on SIGTERM")
    finally:
        d.close()


def nomad_system_jobs(ignore=False):
    """System allocations stop after the others; IgnoreSystemJobs leaves them running."""
    d = Double(NOMAD)
    try:
        node = nomad_node_id(d)
        d.control("POST", "/allocs", {"job": "web", "stop_seconds": 0.2})
        d.control("POST", "/allocs", {"job": "logs", "type": "system", "stop_seconds": 0.6})
        t0 = time.monotonic()
        nomad_drain(d, node, {"Deadline": 30 * 10**9, "IgnoreSystemJobs": ignore})
        al = wait_for(lambda: (lambda a: a if a["web"]["DesiredStatus"] == "stop" else None)(
            nomad_allocs(d, node)), 1, "the service alloc is told to stop")
        check(al["logs"]["DesiredStatus"] == "run" and al["logs"]["ClientStatus"] == "running",
              "system alloc untouched while the others drain")
        n = nomad_wait_drained(d, node, 3)
        t_done = time.monotonic() - t0
        al = nomad_allocs(d, node)
        check(al["web"]["ClientStatus"] == "complete" and n["LastDrain"]["Status"] == "complete",
              f"drain completes once the service alloc is done ({t_done:.2f}s)")
        if ignore:
            time.sleep(0.5)
            al = nomad_allocs(d, node)
            check(al["logs"]["ClientStatus"] == "running" and al["logs"]["DesiredStatus"] == "run"
                  and al["logs"]["DesiredTransition"]["Migrate"] is None,
                  "IgnoreSystemJobs: the system alloc keeps running after the drain")
        else:
            check(al["logs"]["ClientStatus"] == "running",
                  "drain is complete while the system alloc is still stopping (as Nomad does)")
            wait_for(lambda: nomad_allocs(d, node)["logs"]["ClientStatus"] == "complete", 2,
                     "system alloc stops after the others")
            al = nomad_allocs(d, node)
            check(al["logs"]["DesiredStatus"] == "stop"
                  and al["logs"]["DesiredTransition"]["Migrate"] is True, "system alloc drained")
    finally:
        d.close()


def nomad_ignore_system_jobs():
    nomad_system_jobs(ignore=True)


def nomad_deadline():
    d = Double(NOMAD)
    try:
        node = nomad_node_id(d)
        d.control("POST", "/allocs", {"job": "web", "stop_seconds": 0.1})
        d.control("POST", "/allocs", {"job": "db", "stuck": True, "stop_seconds": 0.1})
        t0 = time.monotonic()
        nomad_drain(d, node, {"Deadline": 10**9})
        wait_for(lambda: nomad_allocs(d, node)["web"]["ClientStatus"] == "complete", 1,
                 "the normal alloc stops")
        time.sleep(0.3)
        al = nomad_allocs(d, node)
        n, idx = nomad_node(d, node)
        check(al["db"]["ClientStatus"] == "running" and al["db"]["DesiredStatus"] == "run"
              and n["DrainStrategy"] is not None, "stuck alloc runs, drain goes on before the deadline")
        st, h, n = d.get(f"/v1/node/{node}?index={idx}&wait=3s")
        dt = time.monotonic() - t0
        check(n["DrainStrategy"] is None and 0.95 <= dt < 2,
              f"drain ends at the ForceDeadline ({dt:.2f}s)")
        check(n["LastDrain"]["Status"] == "complete" and
              n["Events"][-1]["Details"] == {"deadline_reached": "true"}, "deadline_reached event")
        wait_for(lambda: nomad_allocs(d, node)["db"]["ClientStatus"] == "complete", 1,
                 "stuck alloc stopped at the deadline")
        check(nomad_allocs(d, node)["db"]["DesiredStatus"] == "stop", "force-stopped")

        # force (-1): everything stops at once, ForceDeadline is Go's zero time
        d.control("POST", "/reset")
        node = nomad_node_id(d)
        d.control("POST", "/allocs", {"job": "db", "stuck": True, "stop_seconds": 0.1})
        d.control("POST", "/allocs", {"job": "logs", "type": "system", "stop_seconds": 0.1})
        t0 = time.monotonic()
        nomad_drain(d, node, {"Deadline": -1})
        n, _ = nomad_node(d, node)
        check(n["DrainStrategy"]["ForceDeadline"] == "0001-01-01T00:00:00Z"
              and n["DrainStrategy"]["Deadline"] == -1, "force drain: zero ForceDeadline")
        wait_for(lambda: all(a["ClientStatus"] == "complete"
                             for a in nomad_allocs(d, node).values())
                 and nomad_node(d, node)[0]["DrainStrategy"] is None, 1.5, "force drain done")
        check(time.monotonic() - t0 < 1, "force drain stops the stuck and system allocs at once")
    finally:
        d.close()


def nomad_cancel_and_update():
    d = Double(NOMAD)
    try:
        node = nomad_node_id(d)
        d.control("POST", "/allocs", {"job": "db", "stuck": True})
        nomad_drain(d, node, {"Deadline": 0}, Meta={"message": "first"})
        n1, _ = nomad_node(d, node)
        check(n1["DrainStrategy"]["ForceDeadline"] == "0001-01-01T00:00:00Z", "Deadline 0: no deadline")
        time.sleep(0.3)
        check(nomad_node(d, node)[0]["DrainStrategy"] is not None,
              "no-deadline drain waits for the stuck alloc")
        # draining again updates the strategy; StartedAt is kept
        st, _, _ = nomad_drain(d, node, {"Deadline": 600 * 10**9, "IgnoreSystemJobs": True})
        n2, _ = nomad_node(d, node)
        check(st == 200 and n2["DrainStrategy"]["Deadline"] == 600 * 10**9
              and n2["DrainStrategy"]["StartedAt"] == n1["DrainStrategy"]["StartedAt"]
              and n2["DrainStrategy"]["ForceDeadline"] != "0001-01-01T00:00:00Z"
              and n2["Events"][-1]["Message"] == "Node drain strategy updated"
              and n2["LastDrain"]["Meta"] == {"message": "first"}, "re-drain updates the strategy")
        # cancel
        st, _, r = nomad_drain(d, node, None, MarkEligible=True, Meta={"message": "cancel"})
        n3, _ = nomad_node(d, node)
        check(st == 200 and n3["DrainStrategy"] is None and n3["LastDrain"]["Status"] == "canceled"
              and n3["SchedulingEligibility"] == "eligible" and n3["LastDrain"]["Meta"] ==
              {"message": "cancel"}, "null DrainSpec cancels; MarkEligible → eligible")
        check(isinstance(r["EvalIDs"], list) and len(r["EvalIDs"]) == 1 and r["EvalCreateIndex"] > 0,
              "marking eligible again creates evaluations")
        check(n3["Events"][-1]["Message"] == "Node drain disabled", "event 'Node drain disabled'")
        al = nomad_allocs(d, node)
        check(al["db"]["ClientStatus"] == "running" and al["db"]["DesiredStatus"] == "run",
              "the stuck alloc keeps running after the cancel")
        # cancelling when not draining leaves LastDrain alone; without MarkEligible stays as is
        nomad_drain(d, node, None)
        check(nomad_node(d, node)[0]["LastDrain"]["Status"] == "canceled", "no-op cancel")
        # an operator drain put in place through the control API
        d.control("POST", "/allocs", {"job": "web", "stop_seconds": 0.1})
        d.control("POST", "/node", {"drain": {"Deadline": 0}, "meta": {"by": "operator"}})
        n4, _ = nomad_node(d, node)
        check(n4["DrainStrategy"] is not None and n4["LastDrain"]["Meta"] == {"by": "operator"}
              and n4["LastDrain"]["AccessorID"] == "client:" + node, "control drain")
        check(d.control("GET", "/state")["drain_request_count"] == 4,
              "control drains are not counted as drain requests")
        d.control("POST", "/allocs/" + al["db"]["ID"], {"client_status": "failed"})
        wait_for(lambda: nomad_node(d, node)[0]["DrainStrategy"] is None, 2,
                 "drain completes once the stuck alloc failed and web stopped")
    finally:
        d.close()


def nomad_acl():
    d = Double(NOMAD)
    try:
        node = nomad_node_id(d)
        d.control("POST", "/allocs", {"job": "web", "stop_seconds": 0.1})
        ro, rw, full = (str(uuid.UUID(int=i * (2**128 // 17))) for i in (1, 2, 3))
        r = d.control("POST", "/acl", {"enabled": True, "tokens": [
            {"secret": ro, "policies": ["agent:read", "node:read"]},
            {"secret": rw, "policies": ["agent:read", "node:write"]},
            {"secret": full, "policies": ["agent:read", "node:write", "namespace:read-job"]}]})
        check(ro not in json.dumps(r), "control answer does not echo secrets")
        for hdrs, what in (({}, "no token"), ({"X-Nomad-Token": "nope"}, "unknown token")):
            st, h, b = d.get("/v1/agent/self", hdrs)
            check(st == 403 and b == "Permission denied" and "text/plain" in h["Content-Type"],
                  f"{what}: agent/self → 403 'Permission denied'")
            check(d.get(f"/v1/node/{node}", hdrs)[:3:2] == (403, "Permission denied"),
                  f"{what}: GET node → 403")
        check(nomad_node_id(d, {"X-Nomad-Token": ro}) == node, "agent:read token reads agent/self")
        check(nomad_node(d, node, {"Authorization": "Bearer " + ro})[0]["ID"] == node,
              "Authorization: Bearer works")
        st, _, b = nomad_drain(d, node, {"Deadline": -1}, {"X-Nomad-Token": ro})
        check(st == 403 and b == "Permission denied", "node:read cannot drain")
        check(nomad_allocs(d, node, {"X-Nomad-Token": rw}) == {},
              "without namespace:read-job the allocations are filtered out (not 403)")
        check(list(nomad_allocs(d, node, {"X-Nomad-Token": full})) == ["web"],
              "with namespace:read-job they are listed")
        st, _, r = nomad_drain(d, node, {"Deadline": -1}, {"X-Nomad-Token": full})
        check(st == 200, "node:write drains")
        ld = nomad_node(d, node, {"X-Nomad-Token": rw})[0]["LastDrain"]
        check(re.fullmatch(r"token:[0-9a-f-]{36}", ld["AccessorID"]),
              "LastDrain.AccessorID = token:<accessor>")
        reqs = d.control("GET", "/requests")
        dump = json.dumps(reqs)
        check(all(s not in dump for s in (ro, rw, full)), "secrets never recorded")
        check(any(r["token_present"] and r["token_header"] == "Authorization" for r in reqs)
              and any(not r["token_present"] for r in reqs), "token_present recorded")
        # server-only agent: no stats.client
        d.control("POST", "/node", {"client": False})
        st, _, b = d.get("/v1/agent/self", {"X-Nomad-Token": ro})
        check(st == 200 and "client" not in b["stats"] and b["member"]["Status"] == "alive"
              and b["config"]["Client"]["Enabled"] is False, "server-only agent/self")
    finally:
        d.close()
    d = Double(NOMAD, "--server-only")
    try:
        st, _, b = d.get("/v1/agent/self")
        check(st == 200 and "client" not in b["stats"] and "nomad" in b["stats"],
              "--server-only: no stats.client")
    finally:
        d.close()


def nomad_faults():
    d = Double(NOMAD)
    try:
        node = nomad_node_id(d)
        d.control("POST", "/faults", {"path_prefix": "/v1/node/", "method": "POST", "status": 500,
                                      "count": 2})
        check(len(d.control("GET", "/faults")) == 1, "fault listed")
        st, h, b = nomad_drain(d, node, {"Deadline": -1})
        check(st == 500 and b == "No cluster leader" and "text/plain" in h["Content-Type"],
              "injected 500 with a plain-text body")
        check(d.get(f"/v1/node/{node}")[0] == 200, "GET not affected by a POST fault")
        check(nomad_drain(d, node, {"Deadline": -1})[0] == 500, "second fault")
        check(nomad_drain(d, node, {"Deadline": -1})[0] == 200, "then the drain goes through")
        st_ = d.control("GET", "/state")
        check(st_["drain_request_count"] == 3 and [r["status"] for r in st_["drain_requests"]] ==
              [500, 500, 200], "drain requests with their statuses")
        d.control("POST", "/faults", {"path_prefix": "/v1/agent/self", "delay_seconds": 0.3})
        t0 = time.monotonic()
        check(d.get("/v1/agent/self")[0] == 200 and time.monotonic() - t0 >= 0.3, "delay-only fault")
        d.control("DELETE", "/requests")
        check(d.control("GET", "/requests") == []
              and d.control("GET", "/state")["drain_request_count"] == 0,
              "DELETE requests clears the log and the drain requests")
    finally:
        d.close()


def ecs_agent():
    d = Double(ECS_AGENT)
    try:
        st, h, b = d.get("/v1/metadata")
        check(st == 200 and h["Content-Type"] == "application/json", "metadata → 200 JSON")
        check(list(b) == ["Cluster", "ContainerInstanceArn", "Version"] and b["Cluster"] == "default"
              and b["ContainerInstanceArn"] is None
              and re.fullmatch(r"Amazon ECS Agent - v\d+\.\d+\.\d+ \(\*?[0-9a-f]{8}\)",
                               b["Version"]),
              f"unregistered: ContainerInstanceArn null ({b})")
        st, h, b = d.get("/v1/tasks")
        check(st == 200 and b == {"Tasks": []}, "no tasks → {\"Tasks\": []}")
        arn = ("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/"
               "0123456789abcdef0123456789abcdef")
        r = d.control("POST", "/metadata", {"Cluster": "prod", "ContainerInstanceArn": arn})
        check(r["ContainerInstanceArn"] == arn, "control sets the metadata")
        check(d.get("/v1/metadata")[2] == {"Cluster": "prod", "ContainerInstanceArn": arn,
                                             "Version": r["Version"]}, "metadata follows")
        task = {"Arn": "arn:aws:ecs:us-east-1:123456789012:task/prod/abc", "Family": "web",
                "Version": "3", "Containers": [{"DockerId": "9581a69a761a557fbfce1d0f6745e4af5b",
                                                 "DockerName": "ecs-web-3-app", "Name": "app"}]}
        d.control("POST", "/tasks", task)
        st, _, b = d.get("/v1/tasks")
        check(st == 200 and len(b["Tasks"]) == 1 and b["Tasks"][0]["KnownStatus"] == "RUNNING"
              and b["Tasks"][0]["DesiredStatus"] == "RUNNING", "task listed")
        check(d.get("/v1/tasks?taskarn=" + task["Arn"])[2]["Family"] == "web", "?taskarn=")
        check(d.get("/v1/tasks?dockerid=9581a69a761a")[2]["Arn"] == task["Arn"], "?dockerid= short id")
        st, _, b = d.get("/v1/tasks?taskarn=nope")
        check(st == 404 and b["Arn"] == "" and b["Containers"] is None,
              "unknown task → 404 with an empty task")
        check(d.get("/v1/tasks?taskarn=x&dockerid=y")[0] == 400, "both parameters → 400")
        st, _, b = d.get("/v2/whatever")
        check(st == 200 and b == {"AvailableCommands": ["/v1/metadata", "/v1/tasks", "/license"]},
              "unknown path → the agent's AvailableCommands (200), not 404")
        check(http("POST", d.base + "/v1/metadata", {})[0] == 200, "any method is served")
        # faults
        d.control("POST", "/faults", {"path_prefix": "/v1/metadata", "status": 500})
        st, _, b = d.get("/v1/metadata")
        check(st == 500 and b == {"Cluster": "", "ContainerInstanceArn": None, "Version": ""},
              "500 fault answers the agent's empty metadata")
        check(d.get("/v1/metadata")[0] == 200, "fault used up")
        d.control("POST", "/faults", {"path_prefix": "/v1/", "close": True, "delay_seconds": 0.01})
        try:
            st = d.get("/v1/metadata", timeout=2)[0]
        except (OSError, httpclient.HTTPException) as e:
            st = type(e).__name__
        check(st != 200, f"close fault drops the connection ({st})")
        reqs = d.control("GET", "/requests")
        check([r["path"] for r in reqs][:2] == ["/v1/metadata", "/v1/tasks"]
              and reqs[-1]["status"] == 0, "requests recorded (status 0 = dropped)")
        d.control("POST", "/reset")
        check(d.get("/v1/metadata")[2]["ContainerInstanceArn"] is None
              and d.get("/v1/tasks")[2] == {"Tasks": []}, "reset restores the command line state")
        check(d.close() == 0, "exits 0 at stdin EOF")
    finally:
        d.close()
    d = Double(ECS_AGENT, "--cluster", "prod",
               "--arn", "arn:aws:ecs:eu-west-1:111122223333:container-instance/prod/x")
    try:
        b = d.get("/v1/metadata")[2]
        check(b["Cluster"] == "prod" and b["ContainerInstanceArn"].endswith("/prod/x"),
              "--cluster/--arn")
        d.control("POST", "/metadata", {"ContainerInstanceArn": None})
        d.control("POST", "/reset")
        check(d.get("/v1/metadata")[2]["ContainerInstanceArn"].endswith("/prod/x"),
              "reset goes back to --arn")
    finally:
        d.close()


SCENARIOS = [fluentd_basic, fluentd_sigterm_keeps_chunks_and_resume, fluentd_retry,
             fluentd_startup_race, fluentd_multi_worker, fluentd_multi_output, fluentd_no_orphans,
             fluentd_rpc, fluentd_no_supervisor, mackerel, nomad_basic, nomad_system_jobs,
             nomad_ignore_system_jobs, nomad_deadline, nomad_cancel_and_update, nomad_acl,
             nomad_faults, ecs_agent]


def run_one(fn):
    t0 = time.monotonic()
    try:
        fn()
        return fn.__name__, None, time.monotonic() - t0
    except Exception as e:
        detail = str(e) if isinstance(e, CheckFailed) else traceback.format_exc()
        return fn.__name__, detail, time.monotonic() - t0


def main():
    global VERBOSE
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", action="append", help="run scenarios whose name contains this")
    ap.add_argument("-v", action="store_true")
    ap.add_argument("-j", type=int, default=len(SCENARIOS), help="parallel scenarios")
    a = ap.parse_args()
    VERBOSE = a.v
    sys.setswitchinterval(0.0005)  # keep timing checks tight while scenarios run in threads
    todo = [s for s in SCENARIOS if not a.k or any(k in s.__name__ for k in a.k)]
    t0 = time.monotonic()
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.j)) as ex:
        for name, err, dt in ex.map(run_one, todo):
            if err:
                failed += 1
                print(f"FAIL {name} ({dt:.2f}s): {err}", flush=True)
            else:
                print(f"ok   {name} ({dt:.2f}s)", flush=True)
    print(f"{len(todo) - failed}/{len(todo)} scenarios passed, {_checks} checks, "
          f"{time.monotonic() - t0:.2f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
