"""Load test of the Slack app in HTTP mode: N concurrent simulated supervisors click through
review cards; reports ack latency and lost / duplicated decisions.

    python benchmarks/bot_load.py                      # 50 supervisors, 10,000 cards
    python benchmarks/bot_load.py --cards 200 --users 5 --json out.json

The bot runs for real as ``python -m replyloop serve --http --port 0`` in its own process,
against a local fake Slack (bot/fake_slack.py) in this process. Cards are stored as pending
drafts and posted by the server itself at start-up; each supervisor takes the next card and
clicks Approve with a correctly signed block_actions request built from the recorded card.
A share of cards (--double) is clicked by two supervisors at nearly the same moment.
The bot stores each decision before it acknowledges the click, so "all decided" is reached when
the last click is answered; the card updates (``chat.update``) follow on its work pool and are
waited for too ("all cards updated").

Baseline, measured in the same run on the same server: GET /health under the same
concurrency (the cost of the HTTP round trip alone); the ratio of the two p99s is printed.
Each supervisor pauses one think time (exponential, mean ``--think-ms``) before the first click
as between clicks, so clicks arrive at a steady rate from the start; until 2026-12-02 all 50
clicked at the same instant first, and that start-up burst alone made the p99 (the steady
stream's p99 was about 12 ms on the idle box that day). ``--think-ms 0`` (flat out) measures
bursts. Also printed: the CPU per click of the bot's process and of this one, and the load average
before and after the clicks (on a shared machine the p99 follows the load). Goal: p99 ack
<= 100 ms on 2 idle cores, 0 lost, 0 duplicated decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replyloop.bot.fake_slack import FakeSlack  # noqa: E402
from replyloop.bot.simulate import Simulator  # noqa: E402

SIGNING_SECRET = "bench-signing-secret-0123456789"
BOT_TOKEN = "xoxb-bench-token"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def setup_workspace(root: Path, fake: FakeSlack, users: list[str], cards: int) -> Path:
    from replyloop.config import load_config, write_default_config
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest
    from replyloop.store import Store

    path = write_default_config(root)
    text = path.read_text(encoding="utf-8")
    text = text.replace("api_base_url: https://slack.com/api/", f"api_base_url: {fake.base_url}")
    text = text.replace("review_channel: cs-review", "review_channel: C0BENCH")
    text = text.replace("supervisors: []", "supervisors: [" + ", ".join(users) + "]")
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    with Store(config.db_path) as store:
        questions = [QuestionIn(f"bench-{i}", f"问题 {i}：我的订单 {i} 什么时候到？", "物流查询",
                                f"您好，订单 {i} 预计三天内送达。") for i in range(cards)]
        ingest(config, store, questions, source="demo", checker=lambda t: {"verdict": "pass", "violations": []})
    return path


def start_server(config_path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "REPLYLOOP_INTAKE_TOKEN": "bench-intake", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "serve", "--http", "--port", "0",
                             "--config", str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    line = proc.stdout.readline()
    match = re.search(r"Listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, match.group(1)


def run_clients(sim: Simulator, jobs: list, users: list[str], fn, think_s: float = 0.0) -> list[float]:
    """Run ``fn(sim, user, job) -> latency`` over the jobs with one thread per user. With a think
    time, each user also pauses (exponentially, mean ``think_s``) before its first job, as it does
    between jobs: the clicks arrive as a steady stream from the start, not all 50 users in the
    same millisecond (that burst is what ``--think-ms 0`` measures)."""
    work: queue.Queue = queue.Queue()
    for job in jobs:
        work.put(job)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(user: str) -> None:
        mine = []
        if think_s:
            time.sleep(random.expovariate(1 / think_s))
        while True:
            try:
                job = work.get_nowait()
            except queue.Empty:
                break
            try:
                mine.append(fn(sim, user, job))
            except Exception as exc:  # counted, reported
                errors.append(f"{type(exc).__name__}: {exc}")
        sim.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"client errors: {len(errors)} (first: {errors[0]})", file=sys.stderr)
    return latencies


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--double", type=float, default=0.05, help="share of cards clicked by two supervisors")
    parser.add_argument("--think-ms", type=float, default=250.0,
                        help="mean pause of a supervisor between two clicks (exponential; 0: click flat out, "
                             "which makes latency = users / throughput)")
    parser.add_argument("--baseline-requests", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for cards / decisions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    users = [f"U{i:04d}" for i in range(1, args.users + 1)]

    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
        t0 = time.perf_counter()
        config_path = setup_workspace(Path(tmp), fake, users, args.cards)
        proc, url = start_server(config_path)
        try:
            deadline = time.monotonic() + args.timeout
            cards = fake.wait_for("chat.postMessage", args.cards, timeout=args.timeout)
            post_s = time.perf_counter() - t0
            sim = Simulator(url, SIGNING_SECRET, fake)

            health_n = min(args.baseline_requests, max(args.users * 4, args.cards))
            def health(s: Simulator, user: str, _) -> float:
                elapsed = s.request("GET", "/health").elapsed_s
                if args.think_ms:
                    time.sleep(random.expovariate(1000 / args.think_ms))
                return elapsed

            baseline = run_clients(sim, list(range(health_n)), users, health, args.think_ms / 1000)

            jobs = []
            for card in cards:
                jobs.append(card)
                if rng.random() < args.double:
                    jobs.append(card)  # adjacent: two supervisors pick it up at nearly the same time
            statuses: Counter = Counter()

            think_s = args.think_ms / 1000

            def click(s: Simulator, user: str, card) -> float:
                resp = s.click(card, "approve", user=user)
                statuses[resp.status] += 1
                if think_s:
                    time.sleep(random.expovariate(1 / think_s))
                return resp.elapsed_s

            load_before = os.getloadavg()
            cpu_before = process_cpu_s(proc.pid), own_cpu_s()
            started = time.perf_counter()
            latencies = run_clients(sim, jobs, users, click, think_s)
            click_s = time.perf_counter() - started
            cpu_server, cpu_client = process_cpu_s(proc.pid) - cpu_before[0], own_cpu_s() - cpu_before[1]
            load_after = os.getloadavg()

            db = sqlite3.connect(config_path.parent / "replyloop.db")
            while time.monotonic() < deadline:
                done = db.execute("SELECT count(*) FROM reviews").fetchone()[0]
                if done >= args.cards:
                    break
                time.sleep(0.2)
            settle_s = time.perf_counter() - started
            # decisions are stored before the ack; the card updates and notices follow on the
            # bot's work pool: wait for those too before counting them
            while time.monotonic() < deadline:
                pending = db.execute("SELECT count(*) FROM reviews WHERE card_updated_at IS NULL").fetchone()[0]
                if not pending and len(fake.calls_to("chat.postEphemeral")) >= len(jobs) - args.cards:
                    break
                time.sleep(0.2)
            cards_s = time.perf_counter() - started
            time.sleep(1.0)  # let stragglers (a duplicate decision, if any) land
            reviews = db.execute("SELECT count(*) FROM reviews").fetchone()[0]
            decided = db.execute("SELECT count(DISTINCT draft_id) FROM reviews").fetchone()[0]
            samples = db.execute("SELECT count(*) FROM samples WHERE source = 'review'").fetchone()[0]
            audit = db.execute("SELECT entity_id, count(*) FROM audit_log WHERE action LIKE 'review.%'"
                               " GROUP BY entity_id HAVING count(*) > 1").fetchall()
            db.close()
            updates = Counter(c.params.get("ts") for c in fake.calls_to("chat.update"))
            dup_updates = sum(n - 1 for n in updates.values() if n > 1)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    result = {
        "cards": args.cards, "users": args.users, "think_ms": args.think_ms, "clicks": len(jobs), "double_clicks": len(jobs) - args.cards,
        "http_status": dict(statuses),
        "ack_ms": {"p50": percentile(latencies, 50) * 1000, "p90": percentile(latencies, 90) * 1000,
                   "p99": percentile(latencies, 99) * 1000, "max": max(latencies) * 1000,
                   "mean": statistics.fmean(latencies) * 1000},
        "baseline_health_ms": {"p50": percentile(baseline, 50) * 1000, "p99": percentile(baseline, 99) * 1000},
        "clicks_per_s": len(jobs) / click_s,
        "seconds": {"post_cards": post_s, "clicks": click_s, "all_decided": settle_s, "all_cards_updated": cards_s},
        "lost": args.cards - decided,
        "duplicated": (reviews - decided) + len(audit) + dup_updates + max(0, samples - args.cards),
        "ephemeral_notices": len(fake.calls_to("chat.postEphemeral")),
        # CPU spent while the clicks ran, per click: the bot's process, and this one (the
        # simulated supervisors and the fake Slack answering the bot's card updates)
        "cpu_ms_per_click": {"server": cpu_server / len(jobs) * 1000, "benchmark": cpu_client / len(jobs) * 1000},
        "cpus": os.cpu_count(),
        # the 1-minute load average before and after the clicks (the machine is shared)
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    result["p99_ratio_vs_health"] = result["ack_ms"]["p99"] / max(result["baseline_health_ms"]["p99"], 1e-9)
    result["goal_met"] = result["ack_ms"]["p99"] <= 100 and result["lost"] == 0 and result["duplicated"] == 0
    a, b = result["ack_ms"], result["baseline_health_ms"]
    print(f"{args.users} supervisors, {args.cards} cards, {len(jobs)} clicks ({result['double_clicks']} double), "
          f"think time {args.think_ms:.0f} ms")
    print(f"ack latency ms: p50 {a['p50']:.1f}  p90 {a['p90']:.1f}  p99 {a['p99']:.1f}  max {a['max']:.1f}")
    print(f"baseline GET /health ms: p50 {b['p50']:.1f}  p99 {b['p99']:.1f}  "
          f"(ack p99 / health p99 = {result['p99_ratio_vs_health']:.2f}x)")
    print(f"throughput {result['clicks_per_s']:.0f} clicks/s; all decided after {settle_s:.1f} s "
          f"(stored before each ack), all cards updated after {cards_s:.1f} s; cards posted in {post_s:.1f} s")
    cpu = result["cpu_ms_per_click"]
    print(f"CPU per click: bot {cpu['server']:.2f} ms, benchmark + fake Slack {cpu['benchmark']:.2f} ms; "
          f"load average {load_before[0]:.2f} before the clicks, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(f"lost {result['lost']}, duplicated {result['duplicated']}, "
          f"'already approved' notices {result['ephemeral_notices']}")
    print("goal (p99 <= 100 ms, 0 lost, 0 duplicated):", "met" if result["goal_met"] else "NOT met")
    print("earlier (issue 15, 50 supervisors, 10,000 cards, acks sent before the decision was written, so a crash "
          "lost acknowledged clicks): p99 39.5 ms with 250 ms think time, 339 ms flat out (600 clicks/s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
