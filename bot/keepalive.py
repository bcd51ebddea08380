"""Kept-alive HTTP connections for slack_sdk's WebClient (``bot.slackclient``).

slack_sdk sends every Web API call through ``urllib.request.urlopen``, which opens a new
connection for each call and closes it after the answer: against slack.com a TCP and TLS
handshake for every card update. ``KeptAlive`` sends the same request over one HTTP/1.1
connection per thread and host, kept open between calls (Slack's API keeps connections
alive). On this project's 2-core box against the local fake Slack, a ``chat.update`` cost the
calling thread 0.44 ms of CPU through urlopen, 0.42 ms through urllib3's pool and 0.25 ms here;
with TLS the handshake it saves is worth more.

It answers exactly as slack_sdk's ``_perform_urllib_http_request_internal`` does, so slack_sdk's
retry handlers and the bot's error reporting see what they saw before:

* a connection that cannot be opened, or a request that cannot be sent: ``URLError(reason)``;
* a status outside 2xx: ``HTTPError`` with the status, headers and body (429 and 5xx are then
  retried by slack_sdk's handlers, which read ``Retry-After`` from those headers);
* an error while waiting for the answer (a read timeout, a reset), or a request http.client
  refuses to write (a header value with a line break, a URL with a space): raised as it is, and
  that connection closed (it is left mid-request);
* else ``{"status", "headers", "body"}``, the body decoded by its charset (bytes for gzip).

One difference, on purpose: a 3xx is answered as an ``HTTPError`` (slack_sdk raises it as a
``SlackApiError`` with that status), never followed. urlopen followed a 301/302/303 as a GET to
wherever ``Location`` pointed, the ``Authorization: Bearer xoxb-...`` header included; Slack's
Web API does not redirect, so a redirect means a proxy or host in the way, and the token stays.

A kept connection the server has closed while it was idle is noticed before it is used (its
socket is readable) and replaced. Should the server close it just as a request goes out
(nothing at all was answered: a reset or broken pipe while sending, or the connection closed
before a status line), the request is sent once more on a new connection; a timeout is never
retried here (a server that stopped reading has not dropped the connection), nor is a fresh
connection, nor a request whose status line arrived (a reset in the middle of the body is
raised, as urlopen raised it: Slack has acted on that request). Proxies and non-HTTP URLs go
through urlopen as before.

Without an ``ssl`` context on the client, an https connection gets the context urlopen would
have given it (``ssl._create_default_https_context``: certificates and host names verified).
``timeout`` and ``context`` are the client's (``TrackedWebClient`` sets them from its
``timeout`` and ``ssl`` before every call, as the urlopen path read them on every call); a new
timeout applies to kept connections too.

``close()`` closes every idle connection at once; one carrying a call in another thread is
closed by that thread once its answer is read (the call is not broken by the close).

A thread's connections are closed when the thread ends (a thread started for one retrain run
keeps none open after it), and every thread's when the client is garbage-collected.
"""

from __future__ import annotations

import http.client
import io
import select
import ssl
import threading
import weakref
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request

# errors meaning the server closed the connection before answering anything
_CLOSED_UNANSWERED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _dropped(sock) -> bool:
    """An idle kept-alive socket that is readable has been closed by the server (or holds bytes
    nobody asked for): either way it cannot carry the next request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


class _SendAgain(Exception):
    """A kept connection the server dropped unanswered: send the request on a new one."""


class _Kept(dict):
    """One thread's connections, (scheme, host, port) -> connection. ``threading.local`` drops it
    when its thread ends (or the ``KeptAlive`` is collected): its connections are closed then,
    not left open with nobody to use them."""

    def __del__(self):
        for conn in list(self.values()):
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a socket at collection time
                pass


class KeptAlive:
    """One ``http.client`` connection per thread and (scheme, host, port); see the module doc."""

    def __init__(self, timeout: float, context: ssl.SSLContext | None = None):
        self.timeout = timeout
        self.context = context
        self._local = threading.local()
        self._lock = threading.Lock()
        # every live thread's, for close(); weak, so that a thread's end closes its own (_Kept)
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._busy: set[http.client.HTTPConnection] = set()  # carrying a call now: close() leaves them

    def _connection(self, scheme: str, host: str, port: int | None) -> tuple[http.client.HTTPConnection, bool]:
        """The calling thread's connection to the host and whether it was used before."""
        kept = self._local.__dict__.get("connections")
        if kept is None:
            kept = self._local.connections = _Kept()
        key = (scheme, host, port)
        conn = kept.get(key)
        if conn is not None:
            with self._lock:  # not closed by close() so far; busy, close() now leaves it to this thread
                usable = conn in self._all
                if usable:
                    self._busy.add(conn)
            if usable and conn.sock is not None and not _dropped(conn.sock):
                if conn.timeout != self.timeout:  # the client's timeout was changed since it was opened
                    conn.timeout = self.timeout
                    conn.sock.settimeout(self.timeout)
                return conn, True
            with self._lock:
                self._busy.discard(conn)
            self._forget(conn)
        if scheme == "https":
            # no context: http.client builds urlopen's own default (ssl._create_default_https_context,
            # verifying, ALPN http/1.1), as urlopen's HTTPSHandler did
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        kept[key] = conn
        with self._lock:
            self._all.add(conn)
            self._busy.add(conn)
        return conn, False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        """The call on ``conn`` is over; close it if close() was called meanwhile."""
        with self._lock:
            self._busy.discard(conn)
            stale = conn not in self._all
        if stale:
            self._forget(conn)

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        kept = self._local.__dict__.get("connections", {})
        for key, value in list(kept.items()):
            if value is conn:
                del kept[key]
        with self._lock:
            self._all.discard(conn)

    def send(self, url: str, req: Request) -> dict:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = dict(req.header_items())
        method = req.get_method()
        for attempt in (1, 2):
            conn, reused = self._connection(parts.scheme.lower(), parts.hostname or "", parts.port)
            try:
                return self._exchange(conn, url, method, target, req.data, headers, retry=reused and attempt == 1)
            except _SendAgain:
                continue
            finally:
                self._release(conn)
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt never sends again

    def _exchange(self, conn: http.client.HTTPConnection, url: str, method: str, target: str, data,
                  headers: dict, retry: bool) -> dict:
        """One request and its answer on ``conn``; ``_SendAgain`` when ``retry`` and the server
        dropped the connection unanswered."""
        try:
            conn.request(method, target, body=data, headers=headers)
        except OSError as err:  # urlopen: an unreachable host or a refused send is a URLError
            self._forget(conn)
            if retry and isinstance(err, ConnectionError):  # dropped, not a timeout
                raise _SendAgain() from err
            raise URLError(err) from err
        except BaseException:  # refused by http.client (a bad header or URL): raised as urlopen did,
            self._forget(conn)  # the connection, left mid-request, is never used again
            raise
        try:
            resp = conn.getresponse()
        except _CLOSED_UNANSWERED as err:
            self._forget(conn)
            if retry:  # closed by the server as the request went out
                raise _SendAgain() from err
            raise
        except BaseException:
            self._forget(conn)
            raise
        try:  # answered: an error reading the body is raised, never the request sent again
            body = resp.read()
        except BaseException:
            self._forget(conn)
            raise
        if resp.will_close:
            self._forget(conn)
        if not 200 <= resp.status < 300:
            raise HTTPError(url, resp.status, resp.reason, resp.headers, io.BytesIO(body))
        if resp.headers.get_content_type() == "application/gzip":
            return {"status": resp.status, "headers": resp.headers, "body": body}
        charset = resp.headers.get_content_charset() or "utf-8"
        return {"status": resp.status, "headers": resp.headers, "body": body.decode(charset)}

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for conn in self._all if conn.sock is not None)

    def close(self) -> None:
        """Close every thread's kept connection (a later call opens a new one). One carrying a
        call right now is closed by its thread once that call is answered."""
        with self._lock:
            conns, self._all = [c for c in self._all if c not in self._busy], weakref.WeakSet()
        for conn in conns:
            conn.close()
