"""Hostile tests for the kept-alive Web API client (bot/keepalive.py, bot/slackclient.py): servers
that misbehave at the HTTP and TCP level, compared with slack_sdk's own urlopen path where the
answer must be the same."""

from __future__ import annotations

import gc
import http.client
import os
import socket
import ssl
import subprocess
import threading
import time
from urllib.error import URLError

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from helpers import in_threads
from replyloop.bot.slackclient import _client_class

TOKEN = "xoxb-0000-hostile"
OK = b'{"ok": true, "ts": "1.000001", "channel": "C0REVIEW"}'


def _read_request(rfile):
    """(request line, headers, body) of the next request, or None when the client closed."""
    line = rfile.readline()
    if not line:
        return None
    headers = {}
    while True:
        h = rfile.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = rfile.read(int(headers.get("content-length") or 0))
    return line.decode("latin-1").strip(), headers, body


def answer(body: bytes = OK, status: str = "200 OK", extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"{version} {status}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class Scripted:
    """A raw TCP server: ``script(server, n, sock, rfile)`` serves the n-th connection (from 1)."""

    def __init__(self, script, tls=None):
        self.script, self.tls = script, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.requests: list[tuple[int, str, dict, bytes]] = []
        self.closed = 0  # connections the client closed (EOF seen by the server)
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(self.accepted, sock), daemon=True).start()

    def _serve(self, n, sock):
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.socks.append(sock)
            self.script(self, n, sock, sock.makefile("rb"))
        except OSError:
            pass

    def next_request(self, n, rfile):
        req = _read_request(rfile)
        if req is None:
            self.closed += 1
        else:
            self.requests.append((n, *req))
        return req

    @property
    def base_url(self):
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}/api/"

    def close(self):
        self.listener.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def served():
    servers = []

    def make(script, tls=None):
        servers.append(Scripted(script, tls))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def kept(url, timeout=5, **kwargs):
    """The bot's client, without retry handlers (each failure seen as it is)."""
    client = _client_class()(token=TOKEN, base_url=url, timeout=timeout, **kwargs)
    client.retry_handlers.clear()
    from replyloop.bot.slackclient import SlackHealth
    client.health = SlackHealth()
    return client


def plain(url, timeout=5, **kwargs):
    client = WebClient(token=TOKEN, base_url=url, timeout=timeout, **kwargs)
    client.retry_handlers.clear()
    return client


def serve_forever_ok(extra=""):
    def script(server, n, sock, rfile):
        while server.next_request(n, rfile) is not None:
            sock.sendall(answer(extra=extra))
    return script


def _reset(sock):
    """Close with a TCP reset (SO_LINGER 0), as a crashing proxy or server does."""
    import struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def cut_by_reset_on_second(server, n, sock, rfile):
    """The first request is answered; the second is answered with headers and half its body,
    then the connection is reset: the request WAS answered (and acted on by Slack)."""
    served_here = 0
    while server.next_request(n, rfile) is not None:
        served_here += 1
        if len(server.requests) == 2:
            sock.sendall(answer()[:-10])
            time.sleep(0.3)
            _reset(sock)
            return
        sock.sendall(answer())


@pytest.mark.parametrize("make", [kept, plain])
def test_a_reset_mid_body_is_raised_and_the_request_never_sent_again(served, make):
    """A reset after the status line was received is a failed read of an answer, not a
    connection dropped unanswered: sent once, the error raised (urlopen did the same)."""
    server = served(cut_by_reset_on_second)
    client = make(server.base_url)
    assert client.chat_postMessage(channel="C0REVIEW", text="1")["ok"]
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        client.chat_postMessage(channel="C0REVIEW", text="2")
    time.sleep(0.2)
    assert len(server.requests) == 2, [r[1] for r in server.requests]


@pytest.mark.parametrize("make", [kept, plain])
def test_a_request_http_client_refuses_to_send_does_not_poison_the_thread(served, make):
    """A header value with a line break (or a URL with a control character) is refused by
    http.client as the request is being written: a ValueError as urlopen raised, and the next
    call from the same thread goes out normally."""
    server = served(serve_forever_ok())
    client = make(server.base_url)
    assert client.auth_test()["ok"]
    with pytest.raises(ValueError):
        client.api_call("chat.postMessage", headers={"X-Trace": "a\r\nInjected: 1"}, json={"channel": "C0REVIEW"})
    with pytest.raises(http.client.InvalidURL):
        client.api_call("chat.post Message")
    assert client.chat_postMessage(channel="C0REVIEW", text="after")["ok"]
    assert [r[1].split()[1] for r in server.requests] == ["/api/auth.test", "/api/chat.postMessage"]
    assert not any("injected" in r[2] for r in server.requests)


def test_connections_of_threads_that_ended_are_closed(served):
    """Threads that call Slack once and end (bot/retrain.py starts one a run, the supervisor
    refresh another): their kept connections are closed, not held open until close()."""
    server = served(serve_forever_ok())
    client = kept(server.base_url)

    def once():
        assert client.auth_test()["ok"]
    for _ in range(3):
        threads = [threading.Thread(target=once) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    gc.collect()
    deadline = time.monotonic() + 3
    while server.closed < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.accepted == 30 and server.closed == 30
    assert client.connections.open_connections() == 0
    assert client.auth_test()["ok"]  # the calling thread's own connection is kept as before
    assert client.auth_test()["ok"] and server.accepted == 31


def stops_reading_after_first(server, n, sock, rfile):
    """Answers the first request of the first connection, then reads nothing more (a stalled
    server or proxy: the client's send fills the socket buffers and times out)."""
    if n == 1 and server.next_request(n, rfile) is not None:
        sock.sendall(answer())
    time.sleep(30)


@pytest.mark.parametrize("make", [kept, plain])
def test_a_send_that_times_out_is_a_urlerror_once_never_sent_again(served, make):
    """A timeout while writing a big request on a kept connection is not the server having
    dropped it: URLError(timeout) after one timeout, as urlopen, no second connection."""
    server = served(stops_reading_after_first)
    client = make(server.base_url, timeout=0.5)
    assert client.auth_test()["ok"]
    started = time.monotonic()
    with pytest.raises(URLError) as err:
        client.chat_postMessage(channel="C0REVIEW", text="x" * 32_000_000)
    assert isinstance(err.value.reason, TimeoutError)
    assert time.monotonic() - started < 1.4
    assert server.accepted == (1 if make is kept else 2)  # urlopen: a new connection a call


def stalls_after_first(server, n, sock, rfile):
    """Answers the first request, reads the next ones and never answers them."""
    while server.next_request(n, rfile) is not None:
        if len(server.requests) == 1:
            sock.sendall(answer())


@pytest.mark.parametrize("make", [kept, plain])
def test_the_clients_timeout_set_after_it_was_built_applies(served, make):
    """``client.timeout = ...`` (a slack_sdk attribute, read on every call by the urlopen path)
    applies to the next call, on a kept connection too."""
    server = served(stalls_after_first)
    client = make(server.base_url, timeout=30)
    assert client.auth_test()["ok"]
    client.timeout = 0.3
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.auth_test()
    assert time.monotonic() - started < 3


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (server context, cert file)."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    return server, str(d / "cert.pem")


@pytest.mark.parametrize("make", [kept, plain])
def test_https_refuses_an_untrusted_certificate_by_default(served, cert, make):
    server = served(serve_forever_ok(), tls=cert[0])
    client = make(server.base_url)
    with pytest.raises(URLError) as err:
        client.auth_test()
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    assert server.requests == []


def test_https_with_a_trusting_context_keeps_its_connection(served, cert):
    """The client's ssl context is used (and still checks the host name); the TLS connection is
    kept across calls and replaced once the server closes it while idle."""
    server = served(serve_forever_ok(), tls=cert[0])
    client = kept(server.base_url, ssl=ssl.create_default_context(cafile=cert[1]))
    for _ in range(5):
        assert client.auth_test()["ok"]
    assert server.accepted == 1 and len(server.requests) == 5
    server.socks[0].shutdown(socket.SHUT_RDWR)  # the server drops it while idle
    time.sleep(0.1)
    assert client.auth_test()["ok"] and server.accepted == 2 and len(server.requests) == 6
    other = f"https://localhost:{server.listener.getsockname()[1]}/api/"  # a name the certificate is not for
    with pytest.raises(URLError) as err:
        kept(other, ssl=ssl.create_default_context(cafile=cert[1])).auth_test()
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("make", [kept, plain])
def test_https_without_a_context_uses_urllibs_default_context(served, cert, make, monkeypatch):
    """With no ``ssl`` given, urlopen let http.client build its context from
    ``ssl._create_default_https_context`` (what a site's sitecustomize may point at its own CA
    bundle, or PEP 476's documented opt-out): the kept connections build theirs the same way."""
    trusting = ssl.create_default_context(cafile=cert[1])
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: trusting)
    server = served(serve_forever_ok(), tls=cert[0])
    assert make(server.base_url).auth_test()["ok"]


# -- attacks that held: kept as guards ------------------------------------------------------


def answers_with(*responses, then=OK):
    """Each request of each connection gets the next of ``responses`` (bytes, or a callable
    given the socket), then ``answer(then)``; a response ending in Connection: close closes."""
    queue = list(responses)
    lock = threading.Lock()

    def script(server, n, sock, rfile):
        while server.next_request(n, rfile) is not None:
            with lock:
                resp = queue.pop(0) if queue else answer(then)
            if callable(resp):
                if resp(sock) == "closed":
                    return
                continue
            sock.sendall(resp)
            if b"connection: close" in resp.lower() or resp.startswith(b"HTTP/1.0") and b"keep-alive" not in resp.lower():
                sock.close()
                return
    return script


@pytest.mark.parametrize("make", [kept, plain])
@pytest.mark.parametrize("shape", ["close", "http10", "http10-keepalive", "chunked", "no-length"])
def test_framings_slack_might_answer_with(served, make, shape):
    """Connection: close, HTTP/1.0 with and without keep-alive, chunked, and a body delimited
    by the end of the connection: every call answered right, each request sent once; the kept
    client reuses the connection only where the framing allows it."""
    body = OK
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7)) + b"0\r\n\r\n")

    def no_length(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        sock.close()
        return "closed"
    one = {"close": answer(extra="Connection: close\r\n"), "http10": answer(version="HTTP/1.0"),
           "http10-keepalive": answer(version="HTTP/1.0", extra="Connection: keep-alive\r\n"),
           "chunked": chunked, "no-length": no_length}[shape]
    server = served(answers_with(*[one] * 5))
    client = make(server.base_url)
    for i in range(5):
        assert client.chat_postMessage(channel="C0REVIEW", text=str(i))["ts"] == "1.000001"
    assert len(server.requests) == 5
    reusable = shape in ("http10-keepalive", "chunked")
    assert server.accepted == (1 if make is kept and reusable else 5)
    if make is kept:
        time.sleep(0.1)
        assert client.connections.open_connections() == (1 if reusable else 0)


@pytest.mark.parametrize("make", [kept, plain])
def test_a_body_cut_short_is_an_incomplete_read_sent_once(served, make):
    def cut(sock):
        sock.sendall(answer()[:-5])
        sock.close()
        return "closed"
    server = served(answers_with(answer(), cut))
    client = make(server.base_url)
    assert client.auth_test()["ok"]
    with pytest.raises(http.client.IncompleteRead):
        client.auth_test()
    assert len(server.requests) == 2
    assert client.auth_test()["ok"]


@pytest.mark.parametrize("unsolicited", [
    answer(b'{"ok": true, "ts": "666.666", "channel": "CEVIL"}'),
    b"garbage\r\n\x00\xff",
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
], ids=["extra-response", "garbage", "408-then-close"])
def test_bytes_nobody_asked_for_on_an_idle_connection_never_answer_the_next_call(served, unsolicited):
    """A server that writes on an idle kept connection (an extra response, garbage, nginx-style
    408 before it closes): the next call goes out on a new connection and gets its own answer."""
    def late(sock):
        sock.sendall(answer())
        time.sleep(0.05)
        sock.sendall(unsolicited)
    server = served(answers_with(late))
    client = kept(server.base_url)
    assert client.chat_postMessage(channel="C0REVIEW", text="1")["ts"] == "1.000001"
    time.sleep(0.2)
    assert client.chat_postMessage(channel="C0REVIEW", text="2")["ts"] == "1.000001"
    assert server.accepted == 2 and len(server.requests) == 2


def _with_retries(client):
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler
    client.retry_handlers.extend([RateLimitErrorRetryHandler(max_retry_count=2), ServerErrorRetryHandler(max_retry_count=2)])
    return client


@pytest.mark.parametrize("make", [kept, plain])
@pytest.mark.parametrize("retry_after", [None, "7"])
def test_429_with_and_without_retry_after_is_retried_as_before(served, make, retry_after, monkeypatch):
    """slack_sdk's rate-limit handler reads Retry-After from the HTTPError's headers (its sleep
    recorded, not slept: 7 s from the header, 1-2 s without one) and retries over the kept
    connection; once its retries are spent the 429 is a SlackApiError with Slack's error."""
    import slack_sdk.http_retry.builtin_handlers as handlers
    slept = []
    monkeypatch.setattr(handlers.time, "sleep", slept.append)
    extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    limited = answer(b'{"ok": false, "error": "ratelimited"}', "429 Too Many Requests", extra)
    server = served(answers_with(limited, limited, limited, limited))
    client = _with_retries(make(server.base_url))
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0REVIEW", text="x")
    assert err.value.response.status_code == 429 and err.value.response["error"] == "ratelimited"
    assert len(server.requests) == 3 and len(slept) == 2
    assert all((7 <= d < 8) if retry_after else (1 <= d < 2) for d in slept), slept
    assert client.chat_postMessage(channel="C0REVIEW", text="y")["ok"]  # one more 429, then answered
    assert len(server.requests) == 5 and len(slept) == 3
    assert server.accepted == (1 if make is kept else 5)


def test_5xx_with_a_body_and_headers_reaches_slack_sdk(served):
    server = served(answers_with(answer(b'{"ok": false, "error": "fatal_error"}', "503 Service Unavailable",
                                        "X-Slack-Req-Id: abc\r\n")))
    with pytest.raises(SlackApiError) as err:
        kept(server.base_url).auth_test()
    assert err.value.response.status_code == 503 and err.value.response["error"] == "fatal_error"
    assert err.value.response.headers["X-Slack-Req-Id"] == "abc"


def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else(served):
    """urlopen followed a 302 as a GET to wherever it pointed, Authorization header and all;
    Slack's Web API never redirects, so the kept client answers the 3xx as an error instead."""
    elsewhere = served(serve_forever_ok())
    server = served(answers_with(answer(b"", "302 Found", f"Location: {elsewhere.base_url}auth.test\r\n")))
    with pytest.raises(SlackApiError) as err:
        kept(server.base_url).auth_test()
    assert err.value.response.status_code == 302
    assert elsewhere.requests == []


@pytest.mark.parametrize("make", [kept, plain])
def test_gzip_and_charsets_decode_as_before(served, make):
    gz = b"\x1f\x8b\x08\x00binary"
    gzipped = (b"HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: %d\r\n\r\n" % len(gz)) + gz
    latin = '{"ok": true, "text": "caf\u00e9"}'.encode("latin-1")
    latin1 = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=iso-8859-1\r\nContent-Length: %d\r\n\r\n"
              % len(latin)) + latin
    server = served(answers_with(gzipped, latin1))
    client = make(server.base_url)
    assert client.api_call("admin.analytics.getFile").data == gz
    assert client.api_call("x.y")["text"] == "café"


def test_a_huge_answer_and_many_threads_at_once(served):
    big = b'{"ok": true, "blob": "' + b"x" * 8_000_000 + b'"}'
    server = served(answers_with(answer(big)))
    client = kept(server.base_url)
    assert len(client.api_call("x.big")["blob"]) == 8_000_000

    def work():
        for i in range(15):
            assert client.chat_postMessage(channel="C0REVIEW", text=str(i))["ok"]
    errors = in_threads(work, 16)
    assert errors == [] and len(server.requests) == 1 + 16 * 15 and server.accepted == 17


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("close_each", [False, True])
def test_no_file_descriptor_leaks_over_thousands_of_calls(served, close_each):
    server = served(serve_forever_ok() if not close_each else
                    answers_with(*[answer(extra="Connection: close\r\n")] * 1500))
    client = kept(server.base_url)
    assert client.auth_test()["ok"]
    before = _fds()
    for _ in range(1500 if not close_each else 400):
        client.auth_test()
    time.sleep(0.1)
    assert _fds() - before <= 3
    assert client.connections.open_connections() == (0 if close_each else 1)


def test_use_after_close_and_a_collected_client_leaves_nothing_open(served):
    server = served(serve_forever_ok())
    client = kept(server.base_url)
    assert client.auth_test()["ok"]
    client.close()
    assert client.auth_test()["ok"] and server.accepted == 2
    del client
    gc.collect()
    deadline = time.monotonic() + 3
    while server.closed < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.closed == 2  # close() closed the first, the collection the second


@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_a_proxy_goes_through_urlopen(served, monkeypatch, how):
    """With a proxy (given, or from HTTPS_PROXY as slack_sdk reads it), the request goes to the
    proxy with an absolute URL, as before: not straight to Slack over a kept connection."""
    proxy = served(serve_forever_ok())
    target = "http://slack.invalid/api/"
    if how == "env":
        monkeypatch.setenv("HTTPS_PROXY", proxy.base_url.removesuffix("api/"))
        client = kept(target)
    else:
        client = kept(target, proxy=proxy.base_url.removesuffix("api/"))
    assert client.auth_test()["ok"]
    assert proxy.requests[0][1] == "POST http://slack.invalid/api/auth.test HTTP/1.1"
    assert client.connections.open_connections() == 0


def test_close_while_other_threads_are_mid_call(served):
    """close() from one thread while another is in the middle of calls: those calls still get
    their answers (urlopen's calls shared nothing close() could break), and once they are done
    every connection is closed."""
    server = served(serve_forever_ok())
    client = kept(server.base_url)
    done, hold, errors = threading.Event(), threading.Event(), []

    def calls():
        for _ in range(200):
            try:
                assert client.auth_test()["ok"]
            except Exception as exc:
                errors.append(repr(exc))
        done.set()
        hold.wait(10)  # the thread stays alive: its connection is not closed by its end
    worker = threading.Thread(target=calls)
    worker.start()
    try:
        while not done.wait(0.0005):
            client.close()
        assert errors == []
        client.close()
        deadline = time.monotonic() + 3
        while server.closed < server.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.closed == server.accepted > 1
        assert client.connections.open_connections() == 0
    finally:
        hold.set()
        worker.join()


@pytest.mark.parametrize("make", [kept, plain])
@pytest.mark.parametrize("bad", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"],
                         ids=["garbage", "101-headers", "stalled-body"])
def test_a_broken_answer_is_raised_as_urlopen_raised_it_and_the_next_call_is_fine(served, make, bad):
    """Garbage for a status line, too many headers, a body that never comes (against the
    client's timeout): the same exception as urlopen, the request sent once, the connection
    not used again."""
    server = served(answers_with(answer(), bad))
    client = make(server.base_url, timeout=0.3)
    assert client.auth_test()["ok"]
    with pytest.raises((http.client.HTTPException, TimeoutError)) as err:
        client.auth_test()
    expected = {"garbage": http.client.BadStatusLine, "101-headers": http.client.HTTPException}.get(
        "garbage" if bad.startswith(b"garbage") else "101-headers" if b"X-A" in bad else "", TimeoutError)
    assert isinstance(err.value, expected)
    assert len(server.requests) == 2
    assert client.auth_test()["ok"] and len(server.requests) == 3


def test_a_collected_client_closes_the_connections_of_pool_threads_still_alive(served):
    from concurrent.futures import ThreadPoolExecutor

    server = served(serve_forever_ok())
    client = kept(server.base_url)
    with ThreadPoolExecutor(4) as pool:
        barrier = threading.Barrier(4)

        def call(_):
            barrier.wait(5)  # one call on each of the 4 threads
            return client.auth_test()["ok"]
        assert all(pool.map(call, range(4)))
        assert server.accepted == 4 and client.connections.open_connections() == 4
        del client, call
        gc.collect()
        deadline = time.monotonic() + 3
        while server.closed < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.closed == 4  # the pool's threads live on; their connections do not


def _resets_each(server, n, sock, rfile):
    if server.next_request(n, rfile) is not None:
        _reset(sock)


def _garbage_each(server, n, sock, rfile):
    if server.next_request(n, rfile) is not None:
        sock.sendall(b"garbage\r\n\r\n")
        sock.close()


@pytest.mark.parametrize("script, error, connections", [
    (_resets_each, ConnectionResetError, 201), (_garbage_each, http.client.BadStatusLine, 201),
    (answers_with(*[answer(b'{"ok": false, "error": "fatal_error"}', "503 Service Unavailable")] * 201), SlackApiError, 1),
], ids=["reset", "garbage", "503"])
def test_no_file_descriptor_leaks_on_failing_calls(served, script, error, connections):
    """Every failure path closes what it opened: 200 failing calls leave no descriptor behind
    (a reset or garbage answer: a new connection each, never resent; a 503: the kept one)."""
    server = served(script)
    client = kept(server.base_url)
    with pytest.raises(error):
        client.auth_test()
    before = _fds()
    for _ in range(200):
        with pytest.raises(error):
            client.auth_test()
    time.sleep(0.1)
    assert _fds() - before <= 2
    assert server.accepted == connections and len(server.requests) == 201


def test_the_resend_on_a_new_connection_is_the_only_one(served):
    """A kept connection dropped unanswered: the request goes once more on a new connection;
    dropped unanswered there too, RemoteDisconnected is raised (2 sends, not 3)."""
    def swallow(sock):
        sock.close()
        return "closed"
    server = served(answers_with(answer(), swallow, swallow))
    client = kept(server.base_url)
    assert client.auth_test()["ok"]
    with pytest.raises(http.client.RemoteDisconnected):
        client.auth_test()
    assert len(server.requests) == 3 and server.accepted == 2
    assert client.auth_test()["ok"] and server.accepted == 3
