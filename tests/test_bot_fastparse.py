"""bot/web.py parses a Slack request's body with yarl's C decoder (``parse_slack_body``) and builds
bolt's request from it (``bolt_request``). Both must give what bolt itself gives, for every body:
real payloads of every shape the bot gets, and hostile or malformed ones."""

from __future__ import annotations

import json
import random
import time
from urllib.parse import urlencode

import pytest
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import parse_body
from slack_sdk.signature import SignatureVerifier

from bot_support import *  # noqa: F401,F403
from replyloop.bot.simulate import Simulator
from replyloop.bot.web import bolt_request, parse_slack_body

FORM = "application/x-www-form-urlencoded"


def _bodies() -> list[tuple[str, str]]:
    sim = Simulator("http://127.0.0.1:9", "secret")
    blocks = [{"type": "section", "block_id": "q", "text": {"type": "mrkdwn", "text": "*问题*\n我的订单 1 什么时候到？&=+%#"}},
              {"type": "actions", "block_id": "review_7", "elements": [
                  {"type": "button", "action_id": "replyloop_approve", "value": "7", "text": {"type": "plain_text", "text": "通过"}}]}]
    card = {"channel": "C0REVIEW", "ts": "1.000001", "blocks": blocks, "text": "审核 ✅ 100% <@U1> a+b=c"}
    click = sim.block_action(card, "approve", "USUP1")
    command = sim.command_payload("/retrain", "status now +1 %41 & = ;", "USUP1")
    event = sim.event_payload({"type": "message", "channel": "C0INTAKE", "user": "U9", "text": "退款？\n\"引号\" \\ \u0000",
                               "ts": "2.000002"})
    bodies = [
        (urlencode({"payload": json.dumps(click, ensure_ascii=False)}), FORM),
        (urlencode({"payload": json.dumps(click)}), FORM),  # ASCII-escaped JSON
        (urlencode(command), FORM),
        (json.dumps(event, ensure_ascii=False), "application/json"),
        (json.dumps(event), FORM),  # JSON sent as a form: bolt reads it as JSON ("{" first)
        ("payload=" + "%7B%22a%22%3A" * 3 + "1" + "%7D" * 3, FORM),
        ("a=1&payload=%7B%22type%22%3A%22x%22%7D&payload=%7B%22type%22%3A%22y%22%7D", FORM),  # the last one wins
        ("token=x&text=payload", FORM),  # "payload" only inside a value: bolt answers {}
        ("a=&b&=c&&d=%zz&e=%&f=%4&g=%FF%FE&h=%E9%97&i=%e9%97%ae&j=%00&k=%2B+%20", FORM),
        ("text=" + "%E4%B8%AD" * 5000, FORM),  # 15 KB of escapes
        ("text=中文+直接&x=😀&y=%F0%9F%98%80", FORM),  # raw non-ASCII in the body
        ("a=1;b=2#frag?q", FORM),
        ("a=1\r\nb=2\n&c=\t3", FORM),
        ("", FORM),
        ("a=1", None),
        ("a=1", "text/plain"),
    ]
    rng = random.Random(15)
    alphabet = "ab=&%+;#?09AFfzé中\u0000\n "
    for _ in range(3000):
        bodies.append(("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))), FORM))
    return bodies


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:  # the same kind of failure counts as the same answer
        return type(exc)


def test_parse_slack_body_equals_bolts_parse_body():
    for body, content_type in _bodies():
        assert _outcome(lambda: parse_slack_body(body, content_type)) == _outcome(lambda: parse_body(body, content_type)), body


@pytest.mark.parametrize("body", ["payload=%7Bnot-json", "payload=" + "%5B" * 100_000 + "%5D" * 100_000,
                                  '{"type": "x"', "[1, 2]", '"just a string"', "{}", "payload=%7B%7D"])
def test_malformed_bodies_fail_or_fall_back_as_bolt_does(body):
    headers = {"content-type": FORM}
    mine = _outcome(lambda: vars(bolt_request(body, None, headers)))
    theirs = _outcome(lambda: vars(BoltRequest(body=body, query=None, headers=headers)))
    if isinstance(theirs, dict):
        assert mine.keys() == theirs.keys() and {k: mine[k] for k in mine if k != "context"} == \
            {k: theirs[k] for k in theirs if k != "context"}
    else:
        assert mine is theirs or issubclass(mine, (ValueError, RecursionError))


def _same_request(body, query, headers):
    """``bolt_request`` builds what ``BoltRequest`` builds (or fails as it fails); returns the
    request, or None when both failed."""
    try:
        theirs = BoltRequest(body=body, query=query, headers=headers)
    except Exception as exc:
        with pytest.raises(type(exc)):
            bolt_request(body, query, headers)
        return None
    mine = bolt_request(body, query, headers)
    assert vars(mine).keys() == vars(theirs).keys()
    for name in vars(theirs):
        a, b = getattr(mine, name), getattr(theirs, name)
        assert (dict(a) if name == "context" else a) == (dict(b) if name == "context" else b), (name, body, headers)
    return mine


def test_bolt_request_equals_bolts_own_request():
    """Every attribute bolt's middleware and listeners read: the raw body the signature is
    checked on, the parsed body, the context built from it, the mode, query and headers."""
    checked = 0
    for body, content_type in _bodies():
        headers = {"content-type": f"{content_type}; charset=utf-8"} if content_type else {}
        headers["x-slack-request-timestamp"] = "1700000000"
        mine = _same_request(body, "a=1&b=%E4%B8%AD", headers)
        if mine is None:
            continue
        assert mine.mode == "http" and mine.raw_body == body
        copy = mine.to_copyable()  # lazy listeners get a copy: parsed again, the same
        assert copy.body == mine.body and copy.raw_body == body
        checked += 1
    assert checked > 3000


def test_the_signature_is_checked_on_the_body_sent(env):
    """A body signed for one click and sent with another's content is refused: the request's raw
    body (what bolt verifies) is the body received, not one rebuilt from the parse."""
    _, card = env.post_card()
    signed = urlencode({"payload": json.dumps(env.sim.block_action(card, "approve", "USUP2"), ensure_ascii=False)})
    sent = urlencode({"payload": json.dumps(env.sim.block_action(card, "approve", "USUP1"), ensure_ascii=False)})
    ts = int(time.time())
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=str(ts), body=signed)
    assert env.sim.post_slack(sent, FORM, timestamp=ts, signature=signature).status == 401
    time.sleep(0.3)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.sim.post_slack(signed, FORM, timestamp=ts, signature=signature).status == 200
    env.wait_review(1)
    assert env.store.scalar("SELECT reviewer FROM reviews") == "USUP2"


# -- hostile: bolt_request against BoltRequest for headers as any caller may give them ------


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json"},
    {"CONTENT-TYPE": "application/json; charset=utf-8"},
    {"content-type": ["application/json"]},
    {"Content-Type": "application/x-www-form-urlencoded", "content-type": "application/json"},
    {"content-type": "Application/JSON"},
    {"content-type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"},
    {"content-type": " application/json"},
    {"content-type": "application/json ;charset=utf-8"},
    {"content-type": ""},
    {},
], ids=lambda h: repr(h)[:60])
@pytest.mark.parametrize("body", [' {"type": "x", "user": {"id": "U1"}}', '[1, 2]', "a=1&b=2", '{"type": "y", "team": {"id": "T1"}}',
                                  "payload=%7B%22type%22%3A%22z%22%7D", "\ufeff{}", "  "])
def test_bolt_request_reads_the_content_type_as_bolt_does(headers, body):
    """bolt lower-cases header names and takes list values; the content type decides whether a
    body not starting with "{" is JSON."""
    _same_request(body, None, headers)


_PIECES = ["%", "%2", "%25", "%2B", "%2b", "%26", "%3D", "%3B", "%23", "%3F", "%00", "%FF", "%ED%A0%80", "%C0%80",
           "%F4%90%80%80", "%E9%97", "%F0%9F%98", "%F0%9F%98%80", "%e9%97%ae", "%C3", "%C3%A9", "%80", "%zz", "%%",
           "%+", "%u1234", "%0D%0A", "+", ";", "#", "?", "&&", "==", "&", "=", "payload", "payload=", "&payload=",
           "%7B", "%7D", "%22", "{", "\ud800", "\udfff", "\U0001f600", "中", "\x00", "\r\n", "\t", " ", "\u2028"]


def test_differential_fuzz_with_every_latin1_char_surrogates_and_broken_escapes():
    rng = random.Random(1502)
    latin1 = [chr(i) for i in range(256)]
    for _ in range(6000):
        body = "".join(rng.choice(_PIECES) if rng.random() < 0.5 else rng.choice(latin1)
                       for _ in range(rng.randint(0, 14)))
        content_type = rng.choice([FORM, None, "application/json", "text/plain", "Application/X-WWW-Form-Urlencoded"])
        assert _outcome(lambda: parse_slack_body(body, content_type)) == _outcome(lambda: parse_body(body, content_type)), body
    for _ in range(600):  # whole requests, content types with parameters and odd case
        body = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 10)))
        headers = {rng.choice(["content-type", "Content-Type"]):
                   rng.choice([FORM, "Application/X-WWW-Form-Urlencoded; charset=UTF-8", "application/json; charset=utf-8"])}
        _same_request(body, rng.choice([None, "", "a=%FF&b", "x=1;y=2"]), headers)


@pytest.mark.parametrize("body", [
    "k" * 200_000 + "=" + "v" * 200_000,
    "text=" + "%E4%B8%AD" * 110_000,  # about 1 MB of escapes
    "&".join(f"k{i}=%F0%9F%98%80{i}" for i in range(40_000)),
    "&".join(["same=1", "same=2"] * 10_000) + "&same=last",
    "payload=" + "%5B" * 3000 + "%5D" * 3000,  # deep JSON
    "payload=" + "%7B%22a%22%3A" * 2000 + "1" + "%7D" * 2000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,  # JSON nested past the recursion limit
    "payloadpayload=%7B%7D&xpayload=1",  # "payload" only inside a key
    "a=payload%3D%7B%22type%22%3A%22x%22%7D",  # and only inside a value
    "payload=&payload=%7B%22type%22%3A%22last%22%7D",
    "payload=%7B%22type%22%3A%22first%22%7D&payload=",  # the last (empty) one wins: invalid JSON
])
def test_big_deep_and_repeated_bodies_as_bolt(body):
    assert _outcome(lambda: parse_slack_body(body, FORM)) == _outcome(lambda: parse_body(body, FORM))
    if len(body) < 500_000 and "%5B" * 3000 not in body and '{"a":' * 1000 not in body:
        _same_request(body, None, {"content-type": FORM})


def _signed(body: bytes, ts: int) -> str:
    import hashlib
    import hmac
    return "v0=" + hmac.new(SIGNING_SECRET.encode(), b"v0:%d:" % ts + body, hashlib.sha256).hexdigest()


def test_through_the_server_tampered_malformed_and_odd_bodies(env):
    """Through the real server: a body changed by one byte under a valid signature is 401;
    correctly signed but malformed bodies (not JSON, nested past the recursion limit, not UTF-8)
    are 400; none of them stores a review or touches the card. An odd-case content type with a
    charset, and a repeated ``payload`` key (the last wins, as in bolt), are served normally."""
    _, card = env.post_card()
    click = json.dumps(env.sim.block_action(card, "approve", "USUP1"), ensure_ascii=False)
    body = urlencode({"payload": click})
    ts = int(time.time())
    headers = {"Content-Type": FORM, "X-Slack-Request-Timestamp": str(ts)}

    def post(data: bytes, signature: str | None = None, content_type: str = FORM):
        return env.sim.request("POST", "/slack/events", data, {**headers, "Content-Type": content_type,
                                                               "X-Slack-Signature": signature or _signed(data, ts)})
    good = body.encode()
    tampered = good.replace(b"USUP1", b"USUP2")
    assert tampered != good and post(tampered, _signed(good, ts)).status == 401
    assert post(good + b"&x=1", _signed(good, ts)).status == 401  # a field appended
    assert post(good[:-1], _signed(good, ts)).status == 401  # cut by one byte
    for data in [b"payload=%7Bnot-json", b"payload=" + b"%5B" * 150_000 + b"%5D" * 150_000,
                 b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"payload=\xff\xfe", b'{"type": "block_actions"']:
        assert post(data).status == 400, data[:40]
    time.sleep(0.3)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.fake.calls_to("chat.update") == []
    twice = urlencode([("payload", json.dumps({"type": "block_actions", "oops": 1})), ("payload", click)]).encode()
    assert post(twice, content_type="Application/X-WWW-Form-Urlencoded; charset=UTF-8").status == 200
    env.wait_review(1)
    assert env.store.scalar("SELECT reviewer FROM reviews") == "USUP1"


# -- hostile: the yarl versions the project allows --------------------------------------------


def test_the_yarl_floor_is_a_version_that_decodes_as_parse_qsl():
    """yarl 1.19 to 1.24 keep an invalid UTF-8 escape (``%C3``) as it was where parse_qsl (and
    bolt) give U+FFFD; 1.25.1 decodes as parse_qsl does. The project must not allow the others."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    [yarl] = [Requirement(d) for d in deps if Requirement(d).name == "yarl"]
    for bad in ("1.19.0", "1.20.1", "1.22.0", "1.24.5"):
        assert Version(bad) not in yarl.specifier, yarl
    assert Version("1.25.1") in yarl.specifier


def test_a_yarl_that_decodes_otherwise_is_not_used():
    """Whatever yarl is installed, the body is decoded as bolt decodes it: a decoder that keeps
    invalid escapes (what yarl 1.22 does) is noticed at import and parse_qsl used instead."""
    from urllib.parse import parse_qsl

    from replyloop.bot import web

    def like_yarl_1_22(body):  # an invalid UTF-8 escape kept as it was
        return parse_qsl(body.replace("%C3", "%25C3"), keep_blank_values=True)
    assert like_yarl_1_22("a=%C3") == [("a", "%C3")] != parse_qsl("a=%C3", keep_blank_values=True)
    chosen = web._form_pairs_for(like_yarl_1_22)
    assert list(chosen("a=%C3&b=%E4%B8%AD")) == [("a", "\ufffd"), ("b", "中")]
    assert web._form_pairs_for(web._yarl_pairs) is web._yarl_pairs  # the installed one decodes right
    assert web._form_pairs is web._yarl_pairs


def test_signed_json_of_the_wrong_shape_is_400_not_500(env):
    """Well-formed JSON whose fields bolt cannot read (a team, channel or enterprise that is not
    an object, response_urls of numbers) made building bolt's request raise TypeError or
    AttributeError: answered 500 with a traceback, and Slack retries a 500. It is a malformed
    body like any other: 400."""
    ts = int(time.time())
    for data in [b'{"team": 5}', b'{"channel": 7}', b'{"enterprise": 3}', b'{"authorizations": 5}',
                 b'{"response_urls": [5]}', b"payload=%7B%22team%22%3A5%7D"]:
        content_type = "application/json" if data.startswith(b"{") else FORM
        resp = env.sim.request("POST", "/slack/events", data, {"Content-Type": content_type,
                                                               "X-Slack-Request-Timestamp": str(ts),
                                                               "X-Slack-Signature": _signed(data, ts)})
        assert resp.status == 400, (data, resp.status, resp.body)
        assert "malformed payload" in resp.body
