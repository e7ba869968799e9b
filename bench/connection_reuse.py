#!/usr/bin/env python3
"""Does an idle `lastcall run` (queue mode) reuse its connection across long polls?

On AWS every new connection is a TLS handshake, so an idle daemon should keep one. The emulator
cannot show it: moto runs on werkzeug's development server, which closes every connection after
one response. So this points lastcall's SQS client (`AWS_ENDPOINT_URL_SQS`) at a minimal SQS
stand-in that keeps connections alive (HTTP/1.1), answers every ReceiveMessage (the AWS JSON
protocol) with no messages after the long-poll wait, and counts the connections it accepts and
the requests on them. Instance metadata and Auto Scaling are the emulator's.

Usage: connection_reuse.py PATH_TO_LASTCALL [--seconds 60] [--wait 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Emulator, Lastcall, aws_env, cleanup, log, workdir, write_result  # noqa: E402

STATS = {"connections": 0, "requests": 0}
LOCK = threading.Lock()


class SqsStandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as AWS's endpoints

    def setup(self) -> None:
        with LOCK:
            STATS["connections"] += 1
        super().setup()

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            STATS["requests"] += 1
        # A long poll with nothing to receive: the answer comes at the end of the wait.
        time.sleep(min(float(body.get("WaitTimeSeconds", 0)), 20))
        data = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # lastcall stopped in the middle of a long poll


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lastcall")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--wait", type=int, default=2, help="[sqs] wait_time (s): shorter polls give more of them in the time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), SqsStandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sqs = f"http://127.0.0.1:{server.server_port}"
    work = workdir("connection-reuse")
    proc = None
    try:
        with Emulator() as emu:
            iid = emu.group("reuse", 1)[0]
            env = aws_env(work, emu.endpoint, emu.imds(iid), "reuse")
            env["AWS_ENDPOINT_URL_SQS"] = sqs
            cfg = work / "lastcall.toml"
            cfg.write_text(f'[sqs]\nqueue_url = "{sqs}/123456789012/reuse"\nwait_time = "{args.wait}s"\n'
                           f'[lifecycle]\nstate_dir = "{work}/state"\n')
            proc = Lastcall(args.lastcall, work, env, cfg)
            time.sleep(args.seconds)
            with LOCK:
                stats = dict(STATS)
            proc.stop()
    finally:
        if proc:
            proc.stop()
        server.shutdown()
        cleanup(work)
    res = {"seconds": args.seconds, "wait_s": args.wait, **stats,
           "requests_per_connection": stats["requests"] / max(1, stats["connections"])}
    log(f"connection reuse: {stats['requests']} long polls of {args.wait} s on {stats['connections']} connection(s) in {args.seconds:.0f} s")
    if args.json:
        write_result("connection_reuse", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
