"""A real local webhook receiver for the delivery tests and benchmark: a threading HTTP server on
127.0.0.1:0 that checks the signature, records what it got (dedupes on the event id), and fails
or dawdles on purpose."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from replyloop.outbox import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

WEBHOOK_SECRET = "webhook-signing-secret-for-tests"


@dataclass
class Receipt:
    event_id: str
    body: dict
    headers: dict
    at: float
    status: int


@dataclass
class Behaviour:
    fail_rate: float = 0.0          # share answered 500 (seeded: the same run fails the same way)
    status: int = 500               # what a failure answers
    retry_after: str | None = None  # sent with 429 / 503
    slow_rate: float = 0.0          # share that sleeps `slow_s` before answering
    slow_s: float = 0.0
    script: list = field(default_factory=list)  # statuses for the first requests, in order
    redirect_to: str | None = None  # answer 302 with this Location


class Receiver:
    def __init__(self, secret: str = WEBHOOK_SECRET, seed: int = 7, path: str = "/hook", tls=None,
                 host: str = "127.0.0.1"):
        self.secret = secret
        self.path = path
        self.behaviour = Behaviour()
        self.receipts: list[Receipt] = []   # every 2xx answered
        self.requests = 0
        self.bad_signatures = 0
        self.truncated = 0              # bodies cut short by a sender that went away
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # an ssl.SSLContext (server side): an https:// receiver
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _answer(self, h, status: int, headers: dict | None = None) -> None:
        body = b"{}"
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if len(raw) < length:  # the sender went away mid-body (kill -9): no request to answer
            with self._lock:
                self.truncated += 1
            h.close_connection = True
            return
        b = self.behaviour
        with self._lock:
            self.requests += 1
            scripted = b.script.pop(0) if b.script else None
            fail = scripted is None and self._rng.random() < b.fail_rate
            slow = self._rng.random() < b.slow_rate
        if slow:
            time.sleep(b.slow_s)
        if b.redirect_to:
            self._answer(h, 302, {"Location": b.redirect_to})
            return
        if not verify(self.secret, h.headers.get(TIMESTAMP_HEADER), raw, h.headers.get(SIGNATURE_HEADER)):
            with self._lock:
                self.bad_signatures += 1
            self._answer(h, 401)
            return
        status = scripted if scripted is not None else (b.status if fail else 200)
        if status >= 300:
            extra = {"Retry-After": b.retry_after} if b.retry_after and status in (429, 503) else {}
            self._answer(h, status, extra)
            return
        body = json.loads(raw)
        with self._lock:
            self.receipts.append(Receipt(h.headers.get("Idempotency-Key"), body, dict(h.headers), time.time(), status))
        self._answer(h, status)

    def event_ids(self) -> set[str]:
        with self._lock:
            return {r.event_id for r in self.receipts}

    def wait_for(self, n: int, timeout: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while len(self.event_ids()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"received {len(self.event_ids())} of {n} events")
            time.sleep(0.02)
        return self.event_ids()


def self_signed(directory, names=("localhost",), ips=("127.0.0.1",)):
    """A self-signed certificate (openssl CLI) for ``names`` / ``ips``: (cert path, key path)."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    return cert, key
