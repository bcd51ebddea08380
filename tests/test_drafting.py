"""Drafter: canary routing, one base model with switched adapters, latency, policy verdict,
the OpenAI-compatible backend against a real local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eval_fixtures import PROMISE, tiny_models  # noqa: F401 - fixture
from helpers import cli

from replyloop.drafting import Drafter, DraftingError, generate
from replyloop.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture
def served(workspace, tiny_models):
    """Champion = trained adapter, canary (50%) = the promise adapter."""
    config, store = workspace
    config.file.drafting.max_new_tokens = 24
    reg = Registry(store)
    champion = reg.promote(reg.register(tiny_models.trained)["id"], "alice", force=True)
    canary = reg.start_canary(reg.register(tiny_models.promise)["id"], 50, "alice", force=True)
    return config, store, reg, champion, canary


def test_routes_by_conversation_and_switches_adapters_without_reloading(served):
    config, store, reg, champion, canary = served
    drafter = Drafter(config, store)
    results, by_conversation = {}, {}
    for cid in [f"conv-{i}" for i in range(12)]:
        res = drafter.draft("退货运费谁出？", cid, min_new_tokens=4)
        assert res.model_id == reg.route(cid)["id"]
        results.setdefault(res.model_id, []).append(res)
        by_conversation[cid] = res
    assert set(results) == {champion["id"], canary["id"]}
    assert drafter.local.base_loads == 1
    assert set(drafter.local.adapters) == {f"model-{champion['id']}", f"model-{canary['id']}"}
    # the adapters really differ: the canary was trained to open with a promise
    assert all(r.text.startswith(PROMISE[:6]) for r in results[canary["id"]])
    assert not any(r.text.startswith(PROMISE[:6]) for r in results[champion["id"]])
    assert results[champion["id"]][0].model_name == "trained"
    # same conversation, same model, same (greedy) text
    again = drafter.draft("退货运费谁出？", "conv-0", min_new_tokens=4)
    assert (again.model_id, again.text) == (by_conversation["conv-0"].model_id, by_conversation["conv-0"].text)


def test_latency_of_one_draft_is_well_under_a_second(served):
    config, store, reg, champion, _ = served
    drafter = Drafter(config, store)
    drafter.draft("快递三天没更新了怎么办", model=champion["id"])  # load once
    started = time.perf_counter()
    res = drafter.draft("快递三天没更新了怎么办", model=champion["id"], min_new_tokens=8)
    wall = time.perf_counter() - started
    assert res.text and res.latency_s <= wall
    print(f"one tiny-model draft: {wall * 1000:.0f} ms")  # the benchmark measures; no timing assert here


def test_policy_verdict_on_the_draft(served):
    pytest.importorskip("replyloop.evaluation.policy")
    config, store, reg, champion, canary = served
    res = Drafter(config, store).draft("我的东西坏了能赔吗", model=canary["id"], min_new_tokens=8)
    assert res.verdict == "block"
    assert any(v["match"] == "全额赔付" for v in res.violations)


def test_generate_batched_matches_one_at_a_time(tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.base),
                                      tiny_models.trained).eval()
    qs = ["退货运费谁出？", "为什么别人都能收到验证码，就我收不到", "发票怎么开"]
    batched = generate(model, tok, qs, max_new_tokens=12, batch_size=3, min_new_tokens=4)
    single = [generate(model, tok, [q], max_new_tokens=12, batch_size=1, min_new_tokens=4)[0] for q in qs]
    assert batched == single and all(batched)


def test_no_champion_is_a_clear_error(workspace):
    config, store = workspace
    r = cli("draft", "你好")
    assert r.exit_code == 1
    assert r.output == "Error: no champion model yet: register and promote one (`replyloop models promote`)\n"


def test_draft_cli(served):
    config, store, reg, champion, canary = served
    r = cli("draft", "快递三天没更新了怎么办", "--model", "trained", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model_id"] == champion["id"] and out["model_name"] == "trained" and out["backend"] == "local"
    assert out["verdict"] in ("pass", "warn", "block")


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append((self.path, body))
        if body["model"] == "missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "model missing not found"}')
            return
        reply = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                      "content": f" 您好，这是{body['model']}的回复。 "}}]}
        data = json.dumps(reply, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def openai_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_backend_names_the_adapter_as_model(workspace, openai_server, tmp_path):
    from test_registry import fake_adapter

    config, store = workspace
    config.file.drafting.backend = "openai"
    config.file.drafting.openai_base_url = openai_server
    reg = Registry(store)
    champion = reg.promote(reg.register(fake_adapter(tmp_path, "cs-lora-7"))["id"], "alice", force=True)
    res = Drafter(config, store).draft("发票怎么开", "conv-1")
    assert res.text == "您好，这是cs-lora-7的回复。"
    assert res.model_id == champion["id"] and res.backend == "openai"
    [(path, body)] = FakeOpenAI.requests
    assert path == "/v1/chat/completions"
    assert body == {"model": "cs-lora-7", "messages": [{"role": "user", "content": "发票怎么开"}],
                    "max_tokens": config.file.drafting.max_new_tokens, "temperature": 0}
    other = reg.register(fake_adapter(tmp_path, "missing"))
    with pytest.raises(DraftingError, match=r"/v1/chat/completions: HTTP 404 for model 'missing'"):
        Drafter(config, store).draft("发票怎么开", model=other["id"])


def test_openai_backend_unreachable(workspace, tmp_path):
    from test_registry import fake_adapter

    config, store = workspace
    config.file.drafting.backend = "openai"
    config.file.drafting.openai_base_url = "http://127.0.0.1:9/v1"
    reg = Registry(store)
    reg.promote(reg.register(fake_adapter(tmp_path, "m"))["id"], "alice", force=True)
    with pytest.raises(DraftingError, match=r"http://127.0.0.1:9/v1/chat/completions: .*refused"):
        Drafter(config, store).draft("你好", "c")


def test_intake_trusts_the_drafters_check_by_the_same_engine(served):
    """serve shares one engine between drafter and checker: a model draft is checked once, and
    the stored verdict is that check's (the canary drafts 全额赔付: block)."""
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest, policy_checker

    config, store, reg, champion, canary = served
    drafter = Drafter(config, store)
    engine = drafter.policy_engine
    calls = []
    real_check = engine.check
    engine.check = lambda text: calls.append(text) or real_check(text)
    conversation = next(f"c{i}" for i in range(100) if reg.route(f"c{i}")["id"] == canary["id"])
    [res] = ingest(config, store, [QuestionIn(conversation, "坏了能赔吗", "售后")], source="http",
                   drafter=drafter, checker=policy_checker(config, engine))
    draft = store.get_draft(res.draft_id)
    assert len(calls) == 1 and calls[0] == draft["text"]
    assert draft["verdict"] == "block" and draft["violations"][0]["rule"] == "full-compensation"
    # a checker with its own engine still checks the draft itself
    ingest(config, store, [QuestionIn(conversation, "坏了能赔吗?", "售后")], source="http", drafter=drafter,
           checker=policy_checker(config))
    assert len(calls) == 2
