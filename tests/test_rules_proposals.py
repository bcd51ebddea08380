"""Rule proposals mined from edits: seeded reviews, the CLI, and Accept / Edit / Dismiss over real
signed Slack payloads against the local fake Slack."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import yaml

from replyloop.bot import proposals as bot_proposals
from bot_support import SUPERVISORS, OUTSIDER, close_env, make_env, wait_until, point_config_at_fake
from replyloop.evaluation import proposals as props
from replyloop.evaluation.policy_files import read_policies
from replyloop.intake import policy_checker
from rules_support import BELOW_EDITS, DELETE_EDITS, TERM_EDITS, seed_edits, use_workspace_policies


def cli(config, *args):
    return subprocess.run([sys.executable, "-m", "replyloop", *args, "--config", str(config.source)],
                          capture_output=True, text=True, timeout=120)


def test_seeded_edits_give_the_expected_proposals_and_none_below_threshold(workspace):
    config, store = workspace
    seed_edits(store, TERM_EDITS + DELETE_EDITS + BELOW_EDITS)
    out = cli(config, "rules", "propose", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["reviews_read"] == 16
    opened = {(p["kind"], p["avoid"], p["preferred"], p["count"], tuple(p["supervisors"])) for p in got["opened"]}
    assert opened == {("terminology", "包邮", "免运费", 4, ("USUP1", "USUP2")),
                      ("banned", "保证当天到账", None, 4, ("USUP1", "USUP2"))}
    term = next(p for p in got["opened"] if p["kind"] == "terminology")
    assert [(e["draft"], e["final"]) for e in term["examples"]] == [(d, f) for d, f, _ in TERM_EDITS[:3]]
    # below the thresholds (2 edits; 1 supervisor) and covered by a shipped rule: candidates only
    statuses = {r["avoid"]: r["status"] for r in store.query("SELECT avoid, status FROM rule_proposals")}
    assert statuses["稍等片刻"] == "candidate" and statuses["小哥"] == "candidate"
    assert statuses["快递条码"] == "candidate"
    # the next run reads only the reviews since this one
    again = props.propose(config, store)
    assert (again.reviews, again.opened) == (0, [])
    listed = cli(config, "rules", "list")
    assert listed.returncode == 0
    assert "terminology 包邮 → 免运费 (4 edits, 2 supervisors) [open]" in listed.stdout
    assert "banned delete “保证当天到账” (4 edits, 2 supervisors) [open]" in listed.stdout


def test_counts_accumulate_across_runs_and_thresholds_are_configurable(workspace):
    config, store = workspace
    seed_edits(store, TERM_EDITS[:2] + BELOW_EDITS)
    assert props.propose(config, store).opened == []
    seed_edits(store, TERM_EDITS[2:])
    [p] = props.propose(config, store).opened
    assert (p["avoid"], p["preferred"], p["count"]) == ("包邮", "免运费", 4)
    config.file.proposals.min_supervisors = 1  # the one-supervisor 小哥 -> 快递员 now qualifies
    [p] = props.propose(config, store).opened
    assert (p["avoid"], p["preferred"], p["count"], p["supervisors"]) == ("小哥", "快递员", 3, ["USUP1"])


def test_dismissed_is_proposed_again_only_when_its_count_doubles(workspace):
    config, store = workspace
    seed_edits(store, DELETE_EDITS)
    [p] = props.propose(config, store).opened
    assert props.dismiss(store, p["id"], "USUP1").created
    seed_edits(store, DELETE_EDITS[:3])  # 7 < 2 * 4
    assert props.propose(config, store).opened == []
    assert props.get(store, p["id"])["status"] == "dismissed"
    seed_edits(store, DELETE_EDITS[:1])  # 8 = 2 * 4
    [again] = props.propose(config, store).opened
    assert (again["id"], again["count"], again["status"]) == (p["id"], 8, "open")


def test_accept_needs_a_workspace_policy_folder(workspace):
    config, store = workspace
    seed_edits(store, DELETE_EDITS)
    [p] = props.propose(config, store).opened
    with pytest.raises(props.ProposalError) as exc:
        props.accept(config, store, p["id"], "ana")
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith("policies.dir is not set in replyloop.yaml: accepted rules are written"
                                     " only into a workspace policy folder, never into the shipped defaults.")
    assert props.get(store, p["id"])["status"] == "open"


def test_cli_accept_writes_a_valid_file_once(workspace):
    config, store = workspace
    folder = use_workspace_policies(config)
    seed_edits(store, TERM_EDITS)
    [p] = props.propose(config, store).opened
    out = cli(config, "rules", "accept", str(p["id"]), "--as", "ana")
    assert out.returncode == 0, out.stderr
    target = folder / f"proposal-{p['id']}.yaml"
    assert out.stdout == f"Accepted rule proposal #{p['id']}: wrote {target}\n"
    assert yaml.safe_load(target.read_text(encoding="utf-8")) == {
        "terminology": [{"preferred": "免运费", "avoid": ["包邮"]}]}
    again = props.accept(config, store, p["id"], "bob")
    assert (again.created, again.proposal["decided_by"]) == (False, "ana")
    assert sorted(x.name for x in folder.iterdir()) == ["promises.yaml", f"proposal-{p['id']}.yaml",
                                                        "terminology.yaml"]
    [audit] = store.query("SELECT actor, action, entity_id FROM audit_log WHERE action = 'rules.accept'")
    assert audit == {"actor": "ana", "action": "rules.accept", "entity_id": str(p["id"])}


# -- Slack ----------------------------------------------------------------------------------------


@pytest.fixture
def slack(workspace):
    config, store = workspace
    folder = use_workspace_policies(config)
    env = make_env(workspace, checker=policy_checker(config))
    env.folder = folder
    yield env
    close_env(env)


def post(env, edits):
    seed_edits(env.store, edits)
    opened = props.propose(env.config, env.store).opened
    bot_proposals.post_cards(env.bot.client, env.store, env.config.file.slack.review_channel, opened)
    cards = {}
    for p in opened:
        cards[p["id"]] = next(c for c in env.fake.calls_to("chat.postMessage")
                              if any(b.get("block_id") == f"rule_{p['id']}" for b in c.params.get("blocks", [])))
    return opened, cards


def test_slack_card_shows_the_evidence_and_accept_is_for_supervisors(slack):
    [p], cards = post(slack, TERM_EDITS)
    card = cards[p["id"]]
    text = json.dumps(card.params["blocks"], ensure_ascii=False)
    assert "say *免运费*, not ~包邮~" in text
    assert "4 edits by 2 supervisors: <@USUP1>, <@USUP2>" in text
    assert "~本单包邮，请放心。~ → 本单免运费，请放心。" in text
    # someone who is not a supervisor: nothing written, told why
    resp = slack.sim.click(card, bot_proposals.ACCEPT, user=OUTSIDER)
    assert resp.status == 200
    [notice] = slack.fake.wait_for("chat.postEphemeral")
    assert notice.params["text"] == bot_proposals.NOT_SUPERVISOR
    assert not (slack.folder / f"proposal-{p['id']}.yaml").exists()
    # before: a draft saying 包邮 passes
    before = slack.add_draft(question="运费怎么算？", draft="本单包邮。", conversation="c-before")
    assert slack.store.get_draft(before)["verdict"] == "pass"
    slack.sim.click(card, bot_proposals.ACCEPT, user="USUP1")
    [update] = slack.fake.wait_for("chat.update")
    assert "Accepted by <@USUP1>" in json.dumps(update.params["blocks"], ensure_ascii=False)
    target = slack.folder / f"proposal-{p['id']}.yaml"
    read_policies(slack.folder)  # the folder still loads
    assert "免运费" in target.read_text(encoding="utf-8")
    # the running bot checks the next draft against the new entry, no restart
    wait_until(lambda: getattr(slack.bot.checker, "engine", None) is not None
               and any(t.preferred == "免运费" for t in slack.bot.checker.engine.terms))
    after = slack.store.get_draft(slack.add_draft(question="运费怎么算？", draft="本单包邮。", conversation="c-after"))
    assert after["verdict"] == "warn"
    assert [(v["rule"], v["match"], v["suggestion"]) for v in after["violations"]] == [
        ("terminology:免运费", "包邮", "免运费")]


def test_concurrent_accept_clicks_write_once(slack):
    [p], cards = post(slack, DELETE_EDITS)
    card = cards[p["id"]]
    results = []
    threads = [threading.Thread(target=lambda u=u: results.append(slack.sim.click(card, bot_proposals.ACCEPT, user=u)))
               for u in SUPERVISORS * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [200] * 8
    slack.fake.wait_for("chat.update")
    notices = slack.fake.wait_for("chat.postEphemeral", 7)
    assert len(notices) == 7
    assert all(n.params["text"].startswith(f"Rule proposal #{p['id']}: :white_check_mark: Accepted by <@")
               for n in notices)  # the others are told who accepted it
    assert len(store_rows := slack.store.query("SELECT * FROM audit_log WHERE action = 'rules.accept'")) == 1
    written = [x for x in slack.folder.iterdir() if x.name.startswith("proposal-")]
    assert [x.name for x in written] == [f"proposal-{p['id']}.yaml"]
    assert yaml.safe_load(written[0].read_text(encoding="utf-8"))["rules"][0] == {
        "id": f"proposal-{p['id']}", "severity": "warn",
        "message": f"主管多次删除“保证当天到账”（replyloop rule proposal #{p['id']}）", "phrases": ["保证当天到账"]}
    assert store_rows[0]["actor"] in SUPERVISORS
    assert not [x for x in slack.folder.iterdir() if x.name.startswith(".")]  # no scratch copies left


def open_edit(slack, card, user="USUP2"):
    slack.sim.click(card, bot_proposals.EDIT, user=user)
    return slack.fake.wait_for("views.open")[-1]


def test_edit_refuses_an_invalid_policy_set_with_the_reason(slack):
    [p], cards = post(slack, DELETE_EDITS)
    modal = open_edit(slack, cards[p["id"]])
    values = {bot_proposals.ID_BLOCK: "full-compensation", bot_proposals.AVOID_BLOCK: "保证当天到账",
              bot_proposals.SEVERITY_BLOCK: "block", bot_proposals.MESSAGE_BLOCK: "不得承诺到账时间"}
    resp = slack.sim.submit(modal, user="USUP2", values=values)
    assert resp.status == 200
    error = resp.json()["errors"][bot_proposals.ID_BLOCK]
    assert error.startswith(f"Rule proposal #{p['id']} was not accepted:\n{slack.folder / f'proposal-{p[chr(105)+chr(100)]}.yaml'}:")
    assert "rule 'full-compensation': duplicate rule id (first defined at " in error
    assert str(slack.folder / "promises.yaml") in error
    # a phrase inside an allowed term: every reply saying 电子面单 would be flagged
    resp = slack.sim.submit(modal, user="USUP2", values={**values, bot_proposals.ID_BLOCK: "no-same-day",
                                                         bot_proposals.AVOID_BLOCK: "保证当天到账, 面单"})
    error = resp.json()["errors"][bot_proposals.AVOID_BLOCK]
    assert "phrase '面单' is part of the allowed term '电子面单'" in error
    assert props.get(slack.store, p["id"])["status"] == "open"
    assert not any(x.name.startswith(("proposal-", ".")) for x in slack.folder.iterdir())
    # a valid edit is accepted as edited
    resp = slack.sim.submit(modal, user="USUP2", values={**values, bot_proposals.ID_BLOCK: "no-same-day"})
    assert (resp.status, resp.body) == (200, "")
    written = yaml.safe_load((slack.folder / f"proposal-{p['id']}.yaml").read_text(encoding="utf-8"))
    assert written == {"rules": [{"id": "no-same-day", "severity": "block", "message": "不得承诺到账时间",
                                  "phrases": ["保证当天到账"]}]}
    wait_until(lambda: any(r.id == "no-same-day" for r in slack.bot.checker.engine.rules))
    draft = slack.store.get_draft(slack.add_draft(draft="退款保证当天到账。", conversation="c-blocked"))
    assert draft["verdict"] == "block"


def test_dismiss_from_slack(slack):
    [p], cards = post(slack, DELETE_EDITS)
    slack.sim.click(cards[p["id"]], bot_proposals.DISMISS, user="USUP1")
    [update] = slack.fake.wait_for("chat.update")
    assert "Dismissed by <@USUP1>" in json.dumps(update.params["blocks"], ensure_ascii=False)
    assert props.get(slack.store, p["id"])["status"] == "dismissed"
    slack.sim.click(cards[p["id"]], bot_proposals.ACCEPT, user="USUP2")  # a leftover button
    [notice] = slack.fake.wait_for("chat.postEphemeral")
    assert notice.params["text"].startswith(f"Rule proposal #{p['id']}: :x: Dismissed by <@USUP1>")
    assert not (slack.folder / f"proposal-{p['id']}.yaml").exists()


def test_weekly_report_lists_open_accepted_and_dismissed_proposals(workspace):
    from replyloop.evaluation.report import collect_weekly_report, render_markdown
    from replyloop import timeutil

    config, store = workspace
    use_workspace_policies(config)
    seed_edits(store, TERM_EDITS + DELETE_EDITS + BELOW_EDITS)
    config.file.proposals.min_supervisors = 1
    opened = {p["avoid"]: p for p in props.propose(config, store).opened}
    props.accept(config, store, opened["包邮"]["id"], "USUP1")
    props.dismiss(store, opened["小哥"]["id"], "USUP2")
    report = collect_weekly_report(config, store, now=timeutil.now())
    md = render_markdown(report)
    assert "## Rule proposals\n\n1 open, 1 accepted, 1 dismissed (mined from supervisors' edits" in md
    assert f"| #{opened['包邮']['id']} | terminology | 包邮 | 免运费 | 4 | 2 | accepted |" in md
    assert f"| #{opened['保证当天到账']['id']} | banned | 保证当天到账 | (deleted) | 4 | 2 | open |" in md
    assert f"| #{opened['小哥']['id']} | terminology | 小哥 | 快递员 | 3 | 1 | dismissed |" in md
    rows = {(r.category, r.metric): r.value for r in report.rows() if r.section == "rule_proposals"}
    assert rows[(f"#{opened['包邮']['id']} 包邮", "accepted edits")] == 4


def test_accept_after_a_crash_between_the_file_and_the_commit(workspace):
    """kill -9 after the file was written, before the commit: the proposal is still open and its
    file is there (here: an edited entry). Accepting again validates without it and replaces it."""
    config, store = workspace
    folder = use_workspace_policies(config)
    seed_edits(store, DELETE_EDITS)
    [p] = props.propose(config, store).opened
    orphan = folder / f"proposal-{p['id']}.yaml"
    orphan.write_text("rules:\n  - id: full-compensation\n    severity: warn\n    message: x\n    phrases: [保证当天到账]\n",
                      encoding="utf-8")  # would be a duplicate id if it were validated with the new file
    result = props.accept(config, store, p["id"], "USUP1")
    assert result.created and result.path == orphan
    policies = read_policies(folder)
    assert [r.id for r in policies.rules if r.file == orphan] == [f"proposal-{p['id']}"]


def test_forged_and_unknown_buttons(slack):
    [p], cards = post(slack, DELETE_EDITS)
    card = cards[p["id"]]
    for value in ("999", "abc"):
        blocks = json.loads(json.dumps(card.params["blocks"]))
        for b in blocks:
            for el in b.get("elements", []):
                if el.get("action_id") == bot_proposals.ACCEPT:
                    el["value"] = value
        slack.sim.click({"channel": card.response["channel"], "ts": card.response["ts"], "blocks": blocks},
                        bot_proposals.ACCEPT, user="USUP1")
    notices = [n.params["text"] for n in slack.fake.wait_for("chat.postEphemeral", 2)]
    assert sorted(notices) == ["Rule proposal #999 was not accepted:\nrule proposal 999 not found",
                               "button value 'abc' is not a rule proposal id"]
    assert props.get(slack.store, p["id"])["status"] == "open"


def test_daily_proposals_job_posts_cards(workspace, monkeypatch):
    from replyloop.bot import jobs
    from replyloop.bot.fake_slack import FakeSlack

    config, store = workspace
    seed_edits(store, TERM_EDITS + DELETE_EDITS)
    fake = FakeSlack().start()
    try:
        point_config_at_fake(config, fake)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-0000-test-bot-token")
        assert jobs.proposals_job(str(config.source)) == "8 edits read, 2 proposals opened"
        posts = fake.wait_for("chat.postMessage", 2)
        assert {p.params["channel"] for p in posts} == {"C0REVIEW"}
        assert sorted(p.params["text"] for p in posts) == [
            "Rule proposal #1: #1 terminology 包邮 → 免运费 (4 edits, 2 supervisors) [open]",
            "Rule proposal #2: #2 banned delete “保证当天到账” (4 edits, 2 supervisors) [open]"]
        stored = {p["id"]: (p["slack_channel"], p["slack_ts"]) for p in props.list_proposals(store)}
        assert all(channel == "C0REVIEW" and ts for channel, ts in stored.values())
        assert jobs.proposals_job(str(config.source)) == "0 edits read, 0 proposals opened"
    finally:
        fake.stop()


def test_concurrent_runs_count_each_edit_once(workspace):
    config, store = workspace
    seed_edits(store, TERM_EDITS + DELETE_EDITS)
    runs = []
    threads = [threading.Thread(target=lambda: runs.append(props.propose(config, store))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.reviews for r in runs) == [0, 0, 0, 8]
    assert sorted(len(r.opened) for r in runs) == [0, 0, 0, 2]
    assert [p["count"] for p in props.list_proposals(store)] == [4, 4]


def test_edit_a_terminology_proposal(slack):
    [p], cards = post(slack, TERM_EDITS)
    modal = open_edit(slack, cards[p["id"]])
    resp = slack.sim.submit(modal, user="USUP1", values={bot_proposals.PREFERRED_BLOCK: "电子面单",
                                                         bot_proposals.AVOID_BLOCK: "包邮"})
    error = resp.json()["errors"][bot_proposals.PREFERRED_BLOCK]
    assert "terminology '电子面单': duplicate terminology entry (first defined at " in error
    resp = slack.sim.submit(modal, user="USUP1", values={bot_proposals.PREFERRED_BLOCK: "免运费",
                                                         bot_proposals.AVOID_BLOCK: "包邮，全场包邮"})
    assert (resp.status, resp.body) == (200, "")
    written = yaml.safe_load((slack.folder / f"proposal-{p['id']}.yaml").read_text(encoding="utf-8"))
    assert written == {"terminology": [{"preferred": "免运费", "avoid": ["包邮", "全场包邮"]}]}


def test_the_bot_picks_up_a_policy_file_accepted_elsewhere(slack):
    """`replyloop rules accept` in another process (here: the library, as the CLI calls it) or a
    file edited by hand: the running bot checks the next draft against it within a second."""
    import time

    seed_edits(slack.store, TERM_EDITS)
    [p] = props.propose(slack.config, slack.store).opened
    assert isinstance(slack.bot.checker, bot_proposals.WatchingChecker)
    first = slack.bot.checker.engine
    props.accept(slack.config, slack.store, p["id"], "USUP2")
    time.sleep(1.1)
    draft = slack.store.get_draft(slack.add_draft(draft="本单包邮。", conversation="c-elsewhere"))
    assert (draft["verdict"], [v["rule"] for v in draft["violations"]]) == ("warn", ["terminology:免运费"])
    assert slack.bot.checker.engine is not first
    # a folder that no longer loads keeps the last good policies
    (slack.folder / "broken.yaml").write_text("rules: [{id: x}]\n", encoding="utf-8")
    time.sleep(1.1)
    draft = slack.store.get_draft(slack.add_draft(draft="本单包邮。", conversation="c-broken"))
    assert draft["verdict"] == "warn"
