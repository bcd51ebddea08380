"""A local fake of the Slack Web API, for tests and ``replyloop demo``.

A real HTTP server on 127.0.0.1 (port 0 by default) that answers the Web API methods
replyloop uses the way Slack does, and records every call so tests can assert on them::

    with FakeSlack() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        slack.wait_for("chat.postMessage")

Failures can be injected (``fail_next("chat.postMessage", status=429, retry_after=1)``)
to test retries. Connections are kept alive between calls (HTTP/1.1, as Slack's API; counted
in ``connections_opened``) and closed by ``stop()``. It also accepts ``response_url`` posts (``slack.response_url()``) and file
uploads (files upload v2).

Socket Mode: ``apps.connections.open`` (with the ``xapp-`` app token) answers a
``ws://127.0.0.1:PORT/link/?ticket=...`` URL served by the same server (RFC 6455: the Upgrade
handshake, text frames both ways with masked client frames, ping/pong, close). The fake says
``hello`` like Slack, sends envelopes and records the acks::

    slack.wait_for_socket()
    envelope_id = slack.socket_send("interactive", payload)   # a block_actions payload
    ack = slack.wait_for_ack(envelope_id)                      # {"envelope_id": ..., "payload"?: ...}

Block Kit limits: ``chat.postMessage`` / ``chat.update`` with a block over Slack's limits are
refused with ``invalid_blocks`` (and ``views.open`` / ``views.update`` / ``views.push`` /
``views.publish`` with ``invalid_arguments``), naming the field, as Slack does; the refused call
is recorded as ``METHOD:invalid``. See ``block_kit_errors`` for the limits checked.

Tokens and channels, as Slack: a call without a token is ``not_authed``, one with a token that
is not a ``xoxb-``/``xoxp-`` token, or one ``revoke_token()`` revoked, is ``invalid_auth``
(``auth.test`` included). The fake knows a few channels (``channels``, ``add_channel``; by
default ``C0REVIEW`` #cs-review, ``C0QUALITY`` #cs-quality, ``C0INTAKE`` #cs-intake, the bot a
member of each), listed by ``conversations.list``. ``chat.postMessage`` / ``chat.postEphemeral``
accept a channel name as Slack does (and answer the id); methods that need an id
(``chat.update``, ``conversations.info``, ``files.completeUploadExternal``'s ``channel_id`` /
``channels``) refuse a name with ``channel_not_found``, recorded as ``METHOD:invalid``; posting
to a known channel the bot is not in is ``not_in_channel`` (the app has no
``chat:write.public``). Any other id-shaped channel (``C…``, ``G…``, ``D…``) is accepted as one
the bot is in.

Not implemented: wss:// (TLS), fragmented frames from the fake, permessage-deflate, and
Slack's own refresh of a connection every few hours (``socket_disconnect()`` asks for one).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    method: str            # "chat.postMessage", "response_url", "upload"
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.time)
    body: bytes = b""
    response: dict[str, Any] | None = None   # what the fake answered (ts of a posted message, a view id)


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    remaining: int
    error: str | None = None


CHANNEL_ID_RE = re.compile(r"[CGD][A-Z0-9]{2,}")
DEFAULT_CHANNELS = {"C0REVIEW": "cs-review", "C0QUALITY": "cs-quality", "C0INTAKE": "cs-intake"}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME = 16 * 1024 * 1024


def ws_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key.strip() + WS_GUID).encode("ascii")).digest()).decode("ascii")


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; servers send unmasked frames, clients pass a 4-byte ``mask``."""
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n <= 125:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


class WebSocketClosed(Exception):
    pass


@dataclass
class SocketConnection:
    """One Socket Mode WebSocket the fake accepted."""

    id: int
    ticket: str
    sock: socket.socket
    rfile: Any
    opened_at: float = field(default_factory=time.time)
    closed: bool = False
    close_code: int | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, opcode: int, payload: bytes) -> None:
        with self.send_lock:
            if self.closed and opcode != OP_CLOSE:
                raise WebSocketClosed(f"socket connection {self.id} is closed")
            self.sock.sendall(ws_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send(OP_TEXT, text.encode("utf-8"))

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise WebSocketClosed("the client went away")
        return data

    def read_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, unmasked payload). Client frames must be masked (RFC 6455 5.1)."""
        b1, b2 = self._read(2)
        opcode, fin, masked, n = b1 & 0x0F, bool(b1 & 0x80), bool(b2 & 0x80), b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        if not masked:
            raise WebSocketClosed("protocol error: a client frame was not masked")
        if n > MAX_FRAME:
            raise WebSocketClosed(f"frame of {n} bytes is too large")
        mask = self._read(4)
        payload = self._read(n)
        return opcode, fin, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and shut the socket; the reader thread then ends."""
        with self.send_lock:
            if not self.closed:
                self.closed = True
                self.close_code = code
                try:
                    self.sock.sendall(ws_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")))
                except OSError:
                    pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# Block Kit limits (docs.slack.dev Block Kit reference): what Slack refuses a message or view for
MAX_BLOCKS = {"message": 50, "modal": 100, "home": 100}
MAX_ID = 255


def _text_errors(obj: Any, where: str, limit: int, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in (("plain_text",) if plain_only else ("plain_text", "mrkdwn")):
        return [f"{where}: must be a {'plain_text' if plain_only else 'text'} object"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}.text: must be more than 0 characters"]
    if len(text) > limit:
        return [f"{where}.text: must be less than {limit + 1} characters (is {len(text)})"]
    return []


def _id_errors(value: Any, where: str) -> list[str]:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_ID):
        return [f"{where}: must be a string of at most {MAX_ID} characters"]
    return []


def _element_errors(el: Any, where: str) -> list[str]:
    if not isinstance(el, dict):
        return [f"{where}: must be an object"]
    errors = _id_errors(el.get("action_id"), f"{where}.action_id")
    kind = el.get("type")
    if kind == "button":
        errors += _text_errors(el.get("text"), f"{where}.text", 75, plain_only=True)
        if el.get("value") is not None and len(str(el["value"])) > 2000:
            errors.append(f"{where}.value: must be less than 2001 characters")
    elif kind == "plain_text_input":
        top = el.get("max_length", 3000)
        if not isinstance(top, int) or not 1 <= top <= 3000:
            errors.append(f"{where}.max_length: must be between 1 and 3000")
            top = 3000
        if el.get("initial_value") is not None and len(str(el["initial_value"])) > top:
            errors.append(f"{where}.initial_value: must be less than {top + 1} characters")
        if el.get("placeholder") is not None:
            errors += _text_errors(el["placeholder"], f"{where}.placeholder", 150, plain_only=True)
    elif kind in ("mrkdwn", "plain_text"):
        errors += _text_errors(el, where, 3000)
    return errors


def block_kit_errors(blocks: Any, surface: str = "message") -> list[str]:
    """What Slack would refuse in ``blocks`` (empty when they are valid): section text 3000 and
    fields 10 x 2000, header 150 (plain_text), context 10 elements, actions 25 elements, button
    text 75 and value 2000, input label and hint 2000, plain_text_input max_length 1-3000 with
    its initial_value within, placeholder 150, block_id and action_id 255, and at most 50
    blocks in a message (100 in a modal or App Home)."""
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return ["blocks: not valid JSON"]
    if not isinstance(blocks, list):
        return ["blocks: must be an array"]
    errors = []
    if len(blocks) > MAX_BLOCKS[surface]:
        errors.append(f"blocks: must have at most {MAX_BLOCKS[surface]} items (has {len(blocks)})")
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(block, dict):
            errors.append(f"{where}: must be an object")
            continue
        errors += _id_errors(block.get("block_id"), f"{where}.block_id")
        kind = block.get("type")
        if kind == "header":
            errors += _text_errors(block.get("text"), f"{where}.text", 150, plain_only=True)
        elif kind == "section":
            if block.get("text") is None and not block.get("fields"):
                errors.append(f"{where}: needs text or fields")
            if block.get("text") is not None:
                errors += _text_errors(block["text"], f"{where}.text", 3000)
            fields = block.get("fields") or []
            if len(fields) > 10:
                errors.append(f"{where}.fields: must have at most 10 items")
            for j, f in enumerate(fields):
                errors += _text_errors(f, f"{where}.fields[{j}]", 2000)
            if block.get("accessory") is not None:
                errors += _element_errors(block["accessory"], f"{where}.accessory")
        elif kind in ("context", "actions"):
            most = 10 if kind == "context" else 25  # Block Kit: elements per block
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= most:
                errors.append(f"{where}.elements: must have 1 to {most} items")
            for j, el in enumerate(elements):
                errors += _element_errors(el, f"{where}.elements[{j}]")
        elif kind == "input":
            if surface == "message":
                errors.append(f"{where}: input blocks are not allowed in messages")
            errors += _text_errors(block.get("label"), f"{where}.label", 2000, plain_only=True)
            if block.get("hint") is not None:
                errors += _text_errors(block["hint"], f"{where}.hint", 2000, plain_only=True)
            errors += _element_errors(block.get("element"), f"{where}.element")
        elif kind not in ("divider", "image", "rich_text", "file", "video"):
            errors.append(f"{where}.type: unknown block type {kind!r}")
    return errors


def view_errors(view: Any) -> list[str]:
    """What Slack would refuse in a modal or App Home view: the blocks, a title / submit / close
    of at most 24 characters, private_metadata 3000, callback_id 255."""
    if isinstance(view, str):
        try:
            view = json.loads(view)
        except ValueError:
            return ["view: not valid JSON"]
    if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
        return ["view.type: must be modal or home"]
    errors = block_kit_errors(view.get("blocks") or [], view["type"])
    errors = [f"view.{e}" for e in errors]
    if view["type"] == "modal":
        errors += _text_errors(view.get("title"), "view.title", 24, plain_only=True)
        for name in ("submit", "close"):
            if view.get(name) is not None:
                errors += _text_errors(view[name], f"view.{name}", 24, plain_only=True)
    if len(str(view.get("private_metadata") or "")) > 3000:
        errors.append("view.private_metadata: must be less than 3001 characters")
    errors += _id_errors(view.get("callback_id"), "view.callback_id")
    return errors


def _decode_params(content_type: str, body: bytes, query: str) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[0] for k, v in parse_qs(query).items()}
    if not body:
        return params
    if "application/json" in content_type:
        try:
            params.update(json.loads(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            pass
    elif "application/x-www-form-urlencoded" in content_type:
        for key, values in parse_qs(body.decode("utf-8")).items():
            value = values[0]
            if key in ("blocks", "view", "files", "attachments") and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            params[key] = value
    return params


class FakeSlack:
    """Records Web API calls; answers like Slack. Use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, team_id: str = "T0FAKE",
                 bot_user_id: str = "UBOT", group_members: dict[str, list[str]] | None = None,
                 ping_interval: float | None = None, channels: dict[str, dict] | None = None):
        """``ping_interval``: ping every open Socket Mode connection that often, as Slack does
        (it also wakes a client blocked in ``recv``, so the client closes at once)."""
        self.calls: list[Call] = []
        # id -> {"name", "is_member", "is_private"}; see the module doc
        self.channels: dict[str, dict] = ({k: dict(v) for k, v in channels.items()} if channels is not None else
                                          {k: {"name": v, "is_member": True, "is_private": False}
                                           for k, v in DEFAULT_CHANNELS.items()})
        self.revoked: set[str] = set()
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.group_members = group_members or {}
        self.user_locales: dict[str, str] = {}  # user id -> Slack locale ("zh-CN", "en-US"): users.info
        self._failures: dict[str, list[_Failure]] = {}
        self._delays: dict[str, float] = {}
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self.app_id = "A0FAKE"
        self.sockets: list[SocketConnection] = []     # every Socket Mode connection, open or closed
        self.acks: list[dict[str, Any]] = []          # what the client sent back, in order
        self.socket_messages: list[dict[str, Any]] = []  # every text frame the client sent (acks too)
        self.pongs: list[bytes] = []
        self.pings_received = 0
        self.pongs_received = 0
        self._tickets: set[str] = set()
        self._socket_ids = itertools.count(1)
        self.ping_interval = ping_interval
        self._stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # as Slack's servers: an answer goes out at once, its head and body not held back for
            # the client's delayed ACK (the bot keeps connections alive; bot.keepalive)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def setup(self):
                super().setup()
                with fake._cond:
                    fake._http_connections.add(self.connection)
                    fake.connections_opened += 1

            def finish(self):
                with fake._cond:
                    fake._http_connections.discard(self.connection)
                super().finish()

            def do_GET(self):
                if (urlparse(self.path).path == "/link/"
                        and self.headers.get("Upgrade", "").lower() == "websocket"):
                    self.close_connection = True
                    fake._websocket(self)
                    return
                self._handle()

            def do_POST(self):
                self._handle()

            def _handle(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload, extra = fake._dispatch(url.path, url.query, headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8"
                                 if not isinstance(payload, bytes) else "text/plain")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http_connections: set[socket.socket] = set()  # kept-alive clients, closed by stop()
        self.connections_opened = 0  # HTTP connections accepted so far (each carries one or more calls)
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What to give ``WebClient(base_url=...)`` and ``slack.api_base_url``."""
        return self.url + "/api/"

    def response_url(self, name: str = "r") -> str:
        return f"{self.url}/response/{name}"

    def start(self) -> "FakeSlack":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-slack", daemon=True)
        self._thread.start()
        if self.ping_interval:
            threading.Thread(target=self._keepalive, name="fake-slack-ping", daemon=True).start()
        return self

    def _keepalive(self) -> None:
        while not self._stopping.wait(self.ping_interval):
            for conn in self.open_sockets():
                try:
                    conn.send(OP_PING, b"fake-slack-keepalive")
                except (WebSocketClosed, OSError):
                    pass

    def stop(self) -> None:
        self._stopping.set()
        for conn in self.open_sockets():
            conn.close(1001, "going away")
        self._server.shutdown()
        self._server.server_close()
        with self._cond:  # a stopped Slack answers nobody, kept-alive connections included
            kept = list(self._http_connections)
        for sock in kept:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ------------------------------------------------------------------------

    def fail_next(self, method: str, status: int = 500, retry_after: int | None = None,
                  count: int = 1, error: str | None = None) -> None:
        """Answer the next ``count`` calls of ``method`` with an HTTP error (429 with Retry-After,
        500, ...) or, with ``error``, a 200 ``{"ok": false, "error": error}``."""
        with self._cond:
            self._failures.setdefault(method, []).append(_Failure(status, retry_after, count, error))

    def add_channel(self, channel_id: str, name: str, is_member: bool = True, is_private: bool = False) -> None:
        with self._cond:
            self.channels[channel_id] = {"name": name, "is_member": is_member, "is_private": is_private}

    def revoke_token(self, token: str) -> None:
        """From now on calls with ``token`` answer ``invalid_auth`` (a token revoked after start)."""
        with self._cond:
            self.revoked.add(token)

    def restore_token(self, token: str) -> None:
        with self._cond:
            self.revoked.discard(token)

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of ``method`` only after ``seconds`` (0 removes the delay):
        a slow Slack, to show that listeners acknowledge before their Web API calls finish."""
        with self._cond:
            if seconds:
                self._delays[method] = seconds
            else:
                self._delays.pop(method, None)

    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Block until ``method`` has been called ``count`` times; returns those calls."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({c.method for c in self.calls})
                    raise TimeoutError(f"{method} called {len(found)} time(s), expected {count}; seen: {seen}")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.calls.clear()

    # -- Socket Mode ---------------------------------------------------------------------------

    def open_sockets(self) -> list[SocketConnection]:
        with self._cond:
            return [c for c in self.sockets if not c.closed]

    def wait_for_socket(self, count: int = 1, timeout: float = 10.0) -> SocketConnection:
        """Block until ``count`` Socket Mode connections have been accepted (a reconnect makes a
        second) and the newest is open; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                open_ = [c for c in self.sockets if not c.closed]
                if len(self.sockets) >= count and open_:
                    return open_[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    tries = [c.method for c in self.calls if c.method.startswith("apps.connections.open")]
                    raise TimeoutError(f"{len(self.sockets)} socket connection(s), expected {count}; "
                                       f"apps.connections.open calls: {tries}")
                self._cond.wait(left)

    def socket_send(self, payload_type: str, payload: dict, envelope_id: str | None = None,
                    accepts_response_payload: bool | None = None, retry_attempt: int | None = None,
                    retry_reason: str | None = None) -> str:
        """Send an envelope (``payload_type``: interactive | slash_commands | events_api) over the
        newest open connection, as Slack does; returns its envelope_id. Pass the same
        ``envelope_id`` again to redeliver it."""
        envelope_id = envelope_id or str(uuid.uuid4())
        if accepts_response_payload is None:  # what Slack sends: the ack can carry a response
            accepts_response_payload = payload_type == "slash_commands" or payload.get("type") in (
                "view_submission", "block_suggestion", "shortcut", "message_action")
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": payload_type, "payload": payload,
                                    "accepts_response_payload": accepts_response_payload}
        if payload_type == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        elif retry_attempt is not None:
            envelope["retry_attempt"], envelope["retry_reason"] = retry_attempt, retry_reason or "timeout"
        conn = self.wait_for_socket(timeout=5.0)
        conn.send_text(json.dumps(envelope, ensure_ascii=False))
        return envelope_id

    def acks_for(self, envelope_id: str) -> list[dict]:
        with self._cond:
            return [a for a in self.acks if a.get("envelope_id") == envelope_id]

    def wait_for_ack(self, envelope_id: str, count: int = 1, timeout: float = 10.0) -> dict:
        """Block until the client has acknowledged ``envelope_id`` ``count`` times; returns the
        last ack (``{"envelope_id": ..., "payload": {...}}``; no payload for an empty ack)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [a for a in self.acks if a.get("envelope_id") == envelope_id]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"envelope {envelope_id} acknowledged {len(found)} time(s), "
                                       f"expected {count}")
                self._cond.wait(left)

    def socket_ping(self, payload: bytes = b"fake-ping", timeout: float = 10.0) -> bytes:
        """Ping the client and wait for its pong (which must echo ``payload``)."""
        with self._cond:
            seen = self.pongs_received
        self.wait_for_socket(timeout=timeout).send(OP_PING, payload)
        deadline = time.monotonic() + timeout
        with self._cond:
            while payload not in self.pongs[len(self.pongs) - min(self.pongs_received - seen, len(self.pongs)):]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no pong")
                self._cond.wait(left)
        return payload

    def socket_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's ``{"type": "disconnect"}``: the client should open a new connection."""
        self.wait_for_socket(timeout=5.0).send_text(json.dumps(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}))

    def _websocket(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve one Socket Mode connection on the handler's socket until either side closes it."""
        ticket = (parse_qs(urlparse(handler.path).query).get("ticket") or [""])[0]
        key = handler.headers.get("Sec-WebSocket-Key")
        with self._cond:
            known = ticket in self._tickets
            self._tickets.discard(ticket)  # a ticket opens one connection
        if not key or handler.headers.get("Sec-WebSocket-Version") != "13" or not known:
            data = json.dumps({"ok": False, "error": "invalid_ticket" if key else "bad_handshake"}).encode()
            handler.send_response(400 if key else 426)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        handler.send_response_only(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", ws_accept(key))
        handler.end_headers()
        handler.wfile.flush()
        conn = SocketConnection(next(self._socket_ids), ticket, handler.connection, handler.rfile)
        conn.send_text(json.dumps({"type": "hello", "num_connections": len(self.open_sockets()) + 1,
                                   "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                                   "connection_info": {"app_id": self.app_id}}))
        with self._cond:
            self.sockets.append(conn)
            self._cond.notify_all()
        try:
            self._read_frames(conn)
        except (WebSocketClosed, OSError) as exc:
            if not conn.closed:
                conn.close(1002 if "protocol" in str(exc) else 1006, str(exc)[:100])
        finally:
            with self._cond:
                conn.closed = True
                self._cond.notify_all()

    def _read_frames(self, conn: SocketConnection) -> None:
        parts: list[bytes] = []
        while True:
            opcode, fin, payload = conn.read_frame()
            if opcode == OP_PING:
                with self._cond:
                    self.pings_received += 1
                conn.send(OP_PONG, payload)
            elif opcode == OP_PONG:
                with self._cond:
                    self.pongs = [*self.pongs[-999:], payload]  # the last 1,000
                    self.pongs_received += 1
                    self._cond.notify_all()
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                conn.close(code)  # echo the close, then the socket ends
                return
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                parts.append(payload)
                if fin:
                    self._on_client_message(b"".join(parts))
                    parts = []

    def _on_client_message(self, data: bytes) -> None:
        try:
            message = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            message = {"unparsed": data.decode("utf-8", "replace")}
        with self._cond:
            self.socket_messages.append(message)
            if isinstance(message, dict) and "envelope_id" in message:
                self.acks.append(message)
            self._cond.notify_all()

    # -- the fake API ------------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def _take_failure(self, method: str) -> _Failure | None:
        with self._cond:
            queue = self._failures.get(method)
            if not queue:
                return None
            failure = queue[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                queue.pop(0)
            return failure

    def _dispatch(self, path: str, query: str, headers: dict, body: bytes):
        if path.startswith("/response/"):
            params = _decode_params(headers.get("content-type", "application/json"), body, query)
            self._record(Call("response_url", params, headers, body=body))
            return 200, b"ok", {}
        if path.startswith("/upload/"):
            self._record(Call("upload", {"file_id": path.rsplit("/", 1)[-1], "size": len(body)}, headers, body=body))
            return 200, b"OK", {}
        if not path.startswith("/api/"):
            return 404, {"ok": False, "error": "unknown_path"}, {}
        method = path[len("/api/"):]
        params = _decode_params(headers.get("content-type", ""), body, query)
        failure = self._take_failure(method)
        if failure is not None:
            self._record(Call(method + ":failed", params, headers, body=body))
            if failure.error:
                return 200, {"ok": False, "error": failure.error}, {}
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            return failure.status, {"ok": False, "error": "ratelimited" if failure.status == 429 else "fatal_error"}, extra
        auth = headers.get("authorization", "")
        if method == "apps.connections.open":  # only the app-level token may open a socket
            if not auth.startswith("Bearer xapp-"):
                error = "not_allowed_token_type" if auth.startswith("Bearer xox") else "not_authed"
                self._record(Call(method + ":unauthed", params, headers, body=body))
                return 200, {"ok": False, "error": error}, {}
            answer = self._open_connection()
            self._record(Call(method, params, headers, body=body, response=answer))
            return 200, answer, {}
        if method != "api.test":
            token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else str(params.get("token") or "")
            error = self._token_error(token)
            if error is not None:
                self._record(Call(method + ":unauthed", params, headers, body=body))
                return 200, {"ok": False, "error": error}, {}
        with self._cond:
            pause = self._delays.get(method, 0.0)
        if pause:
            time.sleep(pause)
        invalid = self._invalid(method, params)
        if invalid is not None:
            self._record(Call(method + ":invalid", params, headers, body=body, response=invalid))
            return 200, invalid, {}
        answer = self._answer(method, params)
        self._record(Call(method, params, headers, body=body, response=answer))
        return 200, answer, {}

    def _token_error(self, token: str) -> str | None:
        if not token:
            return "not_authed"
        with self._cond:
            revoked = token in self.revoked
        if revoked or not re.fullmatch(r"xox[bp]-[A-Za-z0-9-]+", token):
            return "invalid_auth"
        return None

    def _channel_id(self, value: Any) -> str | None:
        """The id of a channel given by id or (for methods that take one) by name, else None."""
        value = str(value or "").strip()
        if CHANNEL_ID_RE.fullmatch(value):
            return value
        name = value.lstrip("#")
        with self._cond:
            return next((cid for cid, c in self.channels.items() if c["name"] == name), None)

    def _invalid(self, method: str, params: dict) -> dict | None:
        """Slack's answer to a channel name where an id is needed, or blocks or a view over Block
        Kit's limits; else None."""
        needs_id = {"chat.update": ["channel"], "conversations.info": ["channel"],
                    "files.completeUploadExternal": ["channel_id", "channels"]}.get(method, [])
        for key in needs_id:
            for value in str(params.get(key) or "").split(","):
                if value.strip() and not CHANNEL_ID_RE.fullmatch(value.strip()):
                    return {"ok": False, "error": "channel_not_found",
                            "response_metadata": {"messages": [f"[ERROR] {key}: {value.strip()!r} is not a channel id"]}}
        user_dm = method == "chat.postMessage" and re.fullmatch(r"[UW][A-Z0-9]{2,}", str(params.get("channel") or ""))
        if method in ("chat.postMessage", "chat.postEphemeral", "chat.update") and not user_dm:
            # (chat.postMessage to a user id posts in the app's DM with them, its App Home Messages tab)
            channel_id = self._channel_id(params.get("channel"))
            if channel_id is None:
                return {"ok": False, "error": "channel_not_found"}
            with self._cond:
                known = self.channels.get(channel_id)
            if known is not None and not known["is_member"]:  # the app has no chat:write.public
                return {"ok": False, "error": "not_in_channel"}
        if method in ("chat.postMessage", "chat.update", "chat.postEphemeral") and params.get("blocks") is not None:
            errors = block_kit_errors(params["blocks"], "message")
            if errors:
                return {"ok": False, "error": "invalid_blocks", "errors": errors,
                        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
        if method in ("views.open", "views.update", "views.push", "views.publish"):
            errors = view_errors(params.get("view"))
            if errors:
                return {"ok": False, "error": "invalid_arguments",
                        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
        return None

    def _replies(self, channel: str, ts: str, with_metadata: bool) -> dict:
        if not ts:
            return {"ok": False, "error": "invalid_arguments"}
        messages = []
        with self._cond:
            posts = [c for c in self.calls if c.method == "chat.postMessage" and c.params.get("channel") == channel
                     and c.params.get("thread_ts") == ts]
        for call in posts:
            message = {"type": "message", "text": call.params.get("text"), "thread_ts": ts,
                       "ts": (call.response or {}).get("ts")}
            metadata = call.params.get("metadata")
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            if with_metadata and metadata:
                message["metadata"] = metadata
            messages.append(message)
        return {"ok": True, "messages": messages, "has_more": False}

    def _open_connection(self) -> dict:
        ticket = uuid.uuid4().hex
        with self._cond:
            self._tickets.add(ticket)
        ws = self.url.replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{ws}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _answer(self, method: str, params: dict) -> dict:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        channel = params.get("channel") or params.get("channel_id") or "C0FAKE"
        channel = self._channel_id(channel) or channel
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "fake", "user": "replyloop",
                    "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": "BFAKE"}
        if method == "chat.postMessage":
            return {"ok": True, "channel": channel, "ts": ts,
                    "message": {"text": params.get("text"), "ts": ts, "blocks": params.get("blocks")}}
        if method == "chat.update":
            return {"ok": True, "channel": channel, "ts": params.get("ts") or ts, "text": params.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": ts}
        if method in ("views.open", "views.update", "views.push", "views.publish"):
            view = params.get("view") if isinstance(params.get("view"), dict) else {}
            return {"ok": True, "view": {**view, "id": f"V{next(self._ids):06d}", "hash": ts}}
        if method == "users.info":  # the locale only with include_locale, as Slack does
            user = str(params.get("user") or "")
            if not re.fullmatch(r"[UW][A-Z0-9]{2,}", user):
                return {"ok": False, "error": "user_not_found"}
            found = {"id": user, "team_id": self.team_id, "name": user.lower()}
            if str(params.get("include_locale")).lower() in ("1", "true") and user in self.user_locales:
                found["locale"] = self.user_locales[user]
            return {"ok": True, "user": found}
        if method == "usergroups.users.list":
            return {"ok": True, "users": self.group_members.get(params.get("usergroup", ""), [])}
        if method == "conversations.info":
            with self._cond:
                known = self.channels.get(channel)
            if known is None:
                return {"ok": True, "channel": {"id": channel, "name": channel, "is_member": True}}
            return {"ok": True, "channel": {"id": channel, **known}}
        if method == "conversations.list":
            types = str(params.get("types") or "public_channel").split(",")
            with self._cond:
                listed = [{"id": cid, **c} for cid, c in self.channels.items()
                          if ("private_channel" if c["is_private"] else "public_channel") in types
                          and (not c["is_private"] or c["is_member"])]
            return {"ok": True, "channels": listed, "response_metadata": {"next_cursor": ""}}
        if method == "conversations.replies":  # the thread's replies posted here, metadata on request
            return self._replies(channel, str(params.get("ts") or ""),
                                 str(params.get("include_all_metadata")).lower() in ("1", "true"))
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._ids):06d}"
            return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = params.get("files")
            if isinstance(files, str):
                files = json.loads(files)
            return {"ok": True, "files": [{"id": f.get("id"), "title": f.get("title")} for f in files or []]}
        return {"ok": True}
