#!/usr/bin/env python3
"""Self-test of the test doubles in this directory: tests/doubles/fluentd and fake_mackerel.py.

    python3 tests/doubles/check_doubles.py [-k NAME]... [-v]

Starts the doubles in temporary directories and checks their behaviour with real signals,
directory scans and HTTP calls. Scenarios run in parallel; exits 1 if any check fails.
"""

import argparse
import concurrent.futures
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

HERE = os.path.dirname(os.path.abspath(__file__))
FLUENTD = os.path.join(HERE, "fluentd")
MACKEREL = os.path.join(HERE, "fake_mackerel.py")
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


SCENARIOS = [fluentd_basic, fluentd_sigterm_keeps_chunks_and_resume, fluentd_retry,
             fluentd_startup_race, fluentd_multi_worker, fluentd_multi_output, fluentd_no_orphans,
             fluentd_rpc, fluentd_no_supervisor, mackerel]


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
