"""Delivery benchmark: decisions -> ``reply.decided`` events -> a local webhook receiver.

    python benchmarks/delivery.py                         # a burst, then 1% and 20% failures, 400 decisions each
    python benchmarks/delivery.py --events 1000 --rate 200 --json out.json

First a burst: all decisions committed in one transaction, then drained (deliveries per second,
against the baseline below). Then for each failure rate, decisions are committed at ``--rate`` per second (``Store.decide`` with the
outbox hook: each event is written in its decision's transaction) while ``replyloop.outbox.Sender``
drains the outbox to a real local HTTP receiver (tests/delivery_support.py) that verifies the
signature and answers the given share of requests (seeded) with 500.
Reported: deliveries per second, time from the decision's commit to its first successful
delivery (p50 / p99), and events lost (never delivered within the deadline) or dead-lettered.

Baseline, measured in the same run against the same receiver with no failures: the same signed
POSTs sent directly from as many threads as the sender has workers, without the outbox (what
durability costs). Goals: p99 <= 1 s at 1% failures; nothing lost at 20%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from delivery_support import WEBHOOK_SECRET, Receiver  # noqa: E402

from replyloop import outbox  # noqa: E402
from replyloop.config import default_config  # noqa: E402
from replyloop.dataio import QuestionIn  # noqa: E402
from replyloop.intake import store_questions  # noqa: E402
from replyloop.store import Store  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _decided_at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def run_case(workdir: Path, events: int, rate: float, fail_rate: float, workers: int, deadline_s: float) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    config = default_config(workdir)
    opts = config.file.delivery
    opts.sources = {"http": ["webhook"]}
    opts.webhook.allow_plain_http = True
    opts.workers = workers
    opts.max_attempts = 20
    with Receiver(seed=11) as rx, Store(workdir / "bench.db") as store:
        opts.webhook.url = rx.url
        rx.behaviour.fail_rate = fail_rate
        rx.behaviour.status = 500
        outbox.install(store, config)
        drafts = [r.draft_id for r in store_questions(
            store, [QuestionIn(f"bench-{i}", f"订单 {i} 什么时候到？", "物流", f"您好，订单 {i} 预计三天内送达。")
                    for i in range(events)], "http", checker=lambda t: {"verdict": "pass", "violations": []})]
        sender = outbox.Sender(store, config, WEBHOOK_SECRET).start()
        started = time.time()
        try:
            if rate <= 0:  # a burst: every decision in one transaction (a group commit), then drained
                with store.transaction():
                    for draft_id in drafts:
                        store.decide(draft_id, "approve", "UBENCH")
                started = time.time()
            for n, draft_id in enumerate(drafts if rate > 0 else []):
                due = started + n / rate
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
                store.decide(draft_id, "approve", "UBENCH")
            expected = {r["event_id"]: _decided_at(r["created_at"]) for r in store.query(
                "SELECT o.event_id, r.created_at FROM outbox o JOIN reviews r ON r.id = o.review_id")}
            end = time.time() + deadline_s
            while len(rx.event_ids()) < len(expected) and time.time() < end:
                time.sleep(0.05)
        finally:
            sender.close()
        first: dict[str, float] = {}
        for receipt in rx.receipts:
            first.setdefault(receipt.event_id, receipt.at)
        latencies = [first[e] - at for e, at in expected.items() if e in first]
        span = (max(first.values()) - started) if first else float("nan")
        counts = outbox.counts(store)
        return {"fail_rate": fail_rate, "events": len(expected), "delivered": len(first),
                "lost": len(set(expected) - set(first)), "dead": counts["dead"],
                "duplicates": len(rx.receipts) - len(first), "requests": rx.requests,
                "deliveries_per_s": len(first) / span if span else float("nan"),
                "latency_s": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                              "max": max(latencies) if latencies else float("nan")}}


def baseline(events: int, workers: int) -> float:
    """Deliveries/s of the same signed POSTs sent directly (no outbox), no failures."""
    with Receiver(seed=1) as rx:
        bodies = [json.dumps({"type": "reply.decided", "id": f"evt_{i}", "final_text": f"您好 {i}"},
                             ensure_ascii=False).encode() for i in range(events)]

        def send(i: int) -> None:
            ts = str(int(time.time()))
            outbox.post_webhook(rx.url, bodies[i], {
                "Content-Type": "application/json", "Idempotency-Key": f"evt_{i}",
                outbox.TIMESTAMP_HEADER: ts, outbox.SIGNATURE_HEADER: outbox.sign(WEBHOOK_SECRET, ts, bodies[i])}, 10)

        started = time.time()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(send, range(events)))
        return events / (time.time() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400, help="decisions per failure rate")
    parser.add_argument("--rate", type=float, default=100.0, help="decisions per second")
    parser.add_argument("--failures", type=float, nargs="+", default=[0.01, 0.20], help="failure shares")
    parser.add_argument("--workers", type=int, default=8, help="delivery.workers")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to wait for the last delivery")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    result: dict = {"baseline_direct_per_s": baseline(args.events, args.workers), "cases": []}
    with tempfile.TemporaryDirectory(prefix="replyloop-delivery-") as tmp:
        burst = run_case(Path(tmp) / "burst", args.events, 0, 0.0, args.workers, args.deadline)
        burst["ratio_vs_direct"] = burst["deliveries_per_s"] / result["baseline_direct_per_s"]
        result["burst"] = burst
        for i, share in enumerate(args.failures):
            case = run_case(Path(tmp) / f"case-{i}", args.events, args.rate, share, args.workers, args.deadline)
            case["offered_per_s"] = args.rate
            result["cases"].append(case)
    print(f"baseline: direct signed POSTs, no outbox: {result['baseline_direct_per_s']:.0f} deliveries/s")
    print(f"burst of {burst['events']} decisions drained through the outbox: {burst['deliveries_per_s']:.0f} "
          f"deliveries/s ({burst['ratio_vs_direct']:.2f}x of direct), {burst['lost']} lost")
    for c in result["cases"]:
        goal = ""
        if abs(c["fail_rate"] - 0.01) < 1e-9:
            goal = "  goal p99 <= 1 s: " + ("met" if c["latency_s"]["p99"] <= 1.0 else "MISSED")
        elif c["fail_rate"] >= 0.2:
            goal = "  goal nothing lost: " + ("met" if c["lost"] == 0 and c["dead"] == 0 else "MISSED")
        print(f"{c['fail_rate']:.0%} failures: {c['delivered']}/{c['events']} delivered, {c['lost']} lost, "
              f"{c['dead']} dead, {c['duplicates']} duplicate(s); {c['deliveries_per_s']:.0f} deliveries/s "
              f"(offered {args.rate:.0f}/s); decision->delivery "
              f"p50 {c['latency_s']['p50'] * 1000:.0f} ms, p99 {c['latency_s']['p99'] * 1000:.0f} ms, "
              f"max {c['latency_s']['max'] * 1000:.0f} ms{goal}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
