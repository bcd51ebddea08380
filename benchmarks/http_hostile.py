"""Hostile clients against ``replyloop serve --http`` (issue 15 part 2): stalled request heads,
1,100 idle connections under ``nofile=1024``, and unauthenticated ``/intake`` bodies stalled
1 byte short of 1 MB.

    python benchmarks/http_hostile.py                    # 400 stalled, 1,100 idle, 200 bodies
    python benchmarks/http_hostile.py --stalled 100 --idle 300 --bodies 50 --json out.json

The server runs for real in its own process (its open-file limit set to ``--nofile``), against
a local fake Slack. Baseline, measured in the same run: the server's RSS and ``GET /health``
latency while nothing else is connected. The attack pass measured the hand-written server
before it was replaced: 400 stalled connections all still held after 45 s; with nofile=1024,
1,100 idle connections made ``/health`` time out; 200 stalled bodies took RSS from 69 MB to
276 MB (4.0x).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replyloop.bot.fake_slack import FakeSlack  # noqa: E402

SIGNING_SECRET = "bench-signing-secret-0123456789"
WRAPPER = ("import resource, runpy, sys; n = int(sys.argv.pop(1)); "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
           "sys.argv = ['replyloop', *sys.argv[1:]]; runpy.run_module('replyloop', run_name='__main__')")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def health(port: int, timeout: float = 10.0) -> float | None:
    """Seconds one ``GET /health`` on a fresh connection took; None when it failed."""
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return time.perf_counter() - started if resp.status == 200 else None
    except OSError:
        return None


def health_series(port: int, n: int) -> dict:
    times = [health(port) for _ in range(n)]
    ok = [t for t in times if t is not None]
    return {"answered": len(ok), "asked": n, "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
            "max_ms": round(max(ok) * 1000, 1) if ok else None}


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) != b"" and still_open(sock)
    except BlockingIOError:
        return True
    except OSError:
        return False


def start_serve(home: Path, slack: FakeSlack, nofile: int) -> tuple[subprocess.Popen, int]:
    from replyloop.config import write_default_config
    import yaml

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["slack"].update({"api_base_url": slack.base_url, "review_channel": "C0REVIEW"})
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "REPLYLOOP_HOME": str(home), "SLACK_BOT_TOKEN": "xoxb-bench",
           "SLACK_SIGNING_SECRET": SIGNING_SECRET, "REPLYLOOP_INTAKE_TOKEN": "bench-intake-token",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(nofile), "serve", "--http", "--port", "0",
                             "--no-scheduler"], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("Listening on "):
            return proc, int(line.split()[2].rsplit(":", 1)[1])
    raise SystemExit("serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stalled", type=int, default=400, help="connections that stall in their request head")
    ap.add_argument("--wait", type=float, default=13.0, help="seconds to wait before counting them (deadline 10 s)")
    ap.add_argument("--idle", type=int, default=1100, help="idle connections while /health is asked")
    ap.add_argument("--bodies", type=int, default=200, help="unauthenticated /intake bodies stalled short of 1 MB")
    ap.add_argument("--nofile", type=int, default=1024, help="the server's open-file limit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + args.bodies + args.stalled + 200
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        proc, port = start_serve(Path(tmp), slack, args.nofile)
        try:
            health_series(port, 5)  # warm up
            results["idle"] = {"rss_mb": round(rss_mb(proc.pid), 1), "health": health_series(port, 20)}

            stalled = []
            for i in range(args.stalled):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"POST /intake HTTP/1.1\r\nHost: x\r\nAuthoriz"[: 10 + i % 30])
                stalled.append(sock)
            during = health_series(port, 10)
            time.sleep(args.wait)
            held = sum(still_open(s) for s in stalled)
            for s in stalled:
                s.close()
            results["stalled_heads"] = {"opened": args.stalled, "held_after_s": args.wait, "held": held,
                                        "health_during": during}

            idle = []
            for _ in range(args.idle):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                except OSError:
                    break
            results["idle_connections"] = {"opened": len(idle), "health": health_series(port, 20)}
            for s in idle:
                s.close()

            time.sleep(0.5)
            before = rss_mb(proc.pid)
            head = f"POST /intake HTTP/1.1\r\nHost: x\r\nContent-Length: {1024 * 1024 - 1}\r\n\r\n".encode()
            chunk = b"x" * (1024 * 1024 - 2)
            bodies, peak = [], before
            for _ in range(args.bodies):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(head)
                sock.setblocking(False)
                try:
                    sock.send(chunk)
                except OSError:
                    pass
                bodies.append(sock)
                peak = max(peak, rss_mb(proc.pid))
            end = time.monotonic() + 3
            while time.monotonic() < end:
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.05)
            health_bodies = health_series(port, 10)
            for s in bodies:
                s.close()
            results["stalled_bodies"] = {"bodies": args.bodies, "rss_before_mb": round(before, 1),
                                         "rss_peak_mb": round(peak, 1), "ratio": round(peak / before, 2),
                                         "health": health_bodies}
        finally:
            proc.terminate()
            proc.wait(30)

    idle_h = results["idle"]["health"]
    sh, ic, sb = results["stalled_heads"], results["idle_connections"], results["stalled_bodies"]
    print(f"baseline (idle server): RSS {results['idle']['rss_mb']} MB, /health p50 {idle_h['p50_ms']} ms, "
          f"max {idle_h['max_ms']} ms")
    print(f"stalled heads: {sh['held']} of {sh['opened']} still held after {sh['held_after_s']:g} s "
          f"(before: 400 of 400 after 45 s); /health meanwhile {sh['health_during']['answered']}/"
          f"{sh['health_during']['asked']} answered, max {sh['health_during']['max_ms']} ms")
    h = ic["health"]
    ratio = f"{h['p50_ms'] / idle_h['p50_ms']:.1f}x the idle p50" if h["p50_ms"] and idle_h["p50_ms"] else "n/a"
    print(f"{ic['opened']} idle connections, server nofile={args.nofile}: /health {h['answered']}/{h['asked']} "
          f"answered, p50 {h['p50_ms']} ms ({ratio}), max {h['max_ms']} ms (before: timed out)")
    print(f"{sb['bodies']} unauthenticated /intake bodies stalled 1 byte short of 1 MB: RSS {sb['rss_before_mb']} -> "
          f"{sb['rss_peak_mb']} MB ({sb['ratio']}x; before: 69 -> 276 MB, 4.0x); /health "
          f"{sb['health']['answered']}/{sb['health']['asked']} answered")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
