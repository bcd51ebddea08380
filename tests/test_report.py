"""Weekly report: numbers from a seeded store, the CSV, report.md, charts, CLI, empty weeks."""

from __future__ import annotations

import csv
import datetime as dt
import json
import struct

import pytest

from helpers import cli

# Monday 2026-11-30 09:00 in Asia/Shanghai: the scheduler's weekly job; the week that just ended is W48.
NOW = dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.timezone.utc)
WEEK = "2026-W48"
PREV = "2026-W47"

# ISO week 48 of 2026 in Asia/Shanghai: 2026-11-22T16:00Z .. 2026-11-29T16:00Z
W48 = ["2026-11-22T16:30:00+00:00",  # Monday 00:30 local, still Sunday in UTC: belongs to W48
       "2026-11-24T02:00:00+00:00", "2026-11-25T03:00:00+00:00", "2026-11-26T04:00:00+00:00",
       "2026-11-29T15:59:00+00:00"]  # Sunday 23:59 local
W47 = ["2026-11-17T02:00:00+00:00", "2026-11-19T06:00:00+00:00"]

EDITS_W48 = [  # (category, draft, final)
    ("物流查询", "请提供快递条码以便查询。", "请提供电子面单以便查询。"),
    ("物流查询", "您的快递条码是多少？", "您的电子面单是多少？"),
    ("登录异常", "请重启手机后再试。", "请清除缓存后再试。"),
]


def _iso(when: str, minutes: int = 0) -> str:
    t = dt.datetime.fromisoformat(when) + dt.timedelta(minutes=minutes)
    return t.isoformat(timespec="microseconds")


def _review(store, when, category, decision, model_id=None, draft="标准回复。", final=None,
            violations=(), verdict="pass", conv="c"):
    """One question + draft + decision, with explicit timestamps (draft 10 minutes earlier)."""
    qid = store.add_question(f"问题 {when} {draft}", conv, category=category)
    did = store.add_draft(qid, draft, model_id=model_id, verdict=verdict, violations=list(violations))
    if decision is not None:
        store.decide(did, decision, "U1", final_text=final)
        store.db.execute("UPDATE reviews SET created_at = ? WHERE draft_id = ?", (_iso(when), did))
    store.db.execute("UPDATE drafts SET created_at = ? WHERE id = ?", (_iso(when, -10), did))
    store.db.execute("UPDATE questions SET created_at = ? WHERE id = ?", (_iso(when, -11), qid))
    return did


def _model(store, name, status, created="2026-10-01T00:00:00+00:00", percent=None):
    return store.db.execute(
        "INSERT INTO models (name, base_model, status, canary_percent, created_at) VALUES (?, 'tiny', ?, ?, ?)",
        (name, status, percent, created)).lastrowid


def _audit(store, at, action, model_id, detail):
    store.db.execute("INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) VALUES"
                     " (?, 'U1', ?, 'model', ?, ?)", (at, action, str(model_id), json.dumps(detail, ensure_ascii=False)))


def _evaluation(store, model_id, at, mean, by_category, n=30, unknown=0.74):
    """An evaluation row; its chrF is the similarity minus 0.5 (overall and per category)."""
    return store.db.execute(
        "INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, mean_chrf, unknown_share,"
        " by_category, created_at) VALUES (?, 'minilm', ?, ?, ?, ?, ?, ?)",
        (model_id, n, mean, round(mean - 0.5, 6), unknown,
         json.dumps({c: {"mean": m, "share_above": 0.5, "n": 10, "chrf": round(m - 0.5, 6)}
                     for c, m in by_category.items()}, ensure_ascii=False), at)).lastrowid


def seed(store) -> dict:
    """A store with known counts for W47 / W48; returns the ids the tests check against."""
    ids = {}
    ids["v1"] = _model(store, "v1", "retired")
    ids["v2"] = _model(store, "v2", "champion")
    ids["v3"] = _model(store, "v3", "canary", percent=10)
    ids["v4"] = _model(store, "v4", "rejected")
    ids["v5"] = _model(store, "v5", "rejected")
    _audit(store, "2026-11-10T02:00:00+00:00", "model.promote", ids["v1"],
           {"reason": "first model", "from": "candidate", "to": "champion"})
    _audit(store, "2026-11-23T02:00:00+00:00", "model.promote", ids["v2"],
           {"reason": "gate passed", "from": "candidate", "to": "champion"})
    _audit(store, "2026-11-23T03:00:00+00:00", "model.canary", ids["v5"],
           {"reason": "", "from": "candidate", "to": "canary", "percent": 20})
    _audit(store, "2026-11-23T05:00:00+00:00", "model.rollback", ids["v5"],
           {"reason": "approvals dropped", "from": "canary", "to": "rejected"})
    _audit(store, "2026-11-24T03:00:00+00:00", "model.canary", ids["v3"],
           {"reason": "gate passed", "from": "candidate", "to": "canary", "percent": 10})
    _audit(store, "2026-11-25T03:00:00+00:00", "model.reject", ids["v4"],
           {"reason": "退换货政策 dropped 0.08", "from": "candidate", "to": "rejected"})
    _audit(store, "2026-12-01T03:00:00+00:00", "model.promote", ids["v3"],  # after the week: ignored
           {"reason": "canary done", "from": "canary", "to": "champion"})
    ids["e1"] = _evaluation(store, ids["v1"], "2026-11-09T00:00:00+00:00", 0.70, {"登录异常": 0.72, "物流查询": 0.68})
    ids["e2"] = _evaluation(store, ids["v1"], "2026-11-19T00:00:00+00:00", 0.71, {"登录异常": 0.73, "物流查询": 0.69})
    ids["e3"] = _evaluation(store, ids["v2"], "2026-11-22T12:00:00+00:00", 0.80, {"登录异常": 0.82, "物流查询": 0.78})
    ids["e4"] = _evaluation(store, ids["v3"], "2026-11-24T01:00:00+00:00", 0.83, {"登录异常": 0.85, "物流查询": 0.81})
    _evaluation(store, ids["v2"], "2026-12-01T00:00:00+00:00", 0.99, {"登录异常": 0.99})  # later: ignored

    v2, v3 = ids["v2"], ids["v3"]
    # W48: 20 reviews. 登录异常 7 approve + 1 edit; 物流查询 5 approve + 2 edit + 1 reject; 支付失败 3 approve + 1 reject.
    # v2 drafted 16 (12 approved unchanged), v3 drafted 4 (3 approved unchanged).
    t = iter(W48 * 4)
    plan = ([("登录异常", "approve", v2)] * 6 + [("登录异常", "approve", v3)]
            + [("物流查询", "approve", v2)] * 4 + [("物流查询", "approve", v3)] + [("物流查询", "reject", v2)]
            + [("支付失败", "approve", v2)] * 2 + [("支付失败", "approve", v3)] + [("支付失败", "reject", v3)])
    warn = [{"rule": "promise.refund_guarantee", "severity": "warn", "match": "保证退款"}]
    ids["approved_bad"] = None
    for i, (cat, decision, model) in enumerate(plan):
        violations = warn if i == 0 else ()
        did = _review(store, next(t), cat, decision, model, draft=f"回复{i}。", violations=violations,
                      verdict="warn" if violations else "pass")
        if i == 0:
            ids["approved_bad"] = did
    for j, (cat, draft, final) in enumerate(EDITS_W48):
        violations = warn * 2 if j == 0 else ()
        _review(store, next(t), cat, "edit", v2, draft=draft, final=final, violations=violations,
                verdict="warn" if violations else "pass")
    # W48 pending drafts, blocked
    block = {"rule": "promise.compensation", "severity": "block"}
    _review(store, W48[2], "售后服务", None, v2, draft="我们保证赔偿。", violations=[block], verdict="block")
    _review(store, W48[3], "售后服务", None, v2, draft="保证赔偿，快递条码。", verdict="block",
            violations=[block, {"rule": "term.快递条码", "severity": "warn"}])
    # W47: 10 reviews, 4 approve, 4 edit, 2 reject (all 登录异常, drafted by v1)
    t47 = iter(W47 * 5)
    for decision in ["approve"] * 4 + ["reject"] * 2:
        _review(store, next(t47), "登录异常", decision, ids["v1"])
    for k in range(4):
        _review(store, next(t47), "登录异常", "edit", ids["v1"], draft="abcd", final="abce")
    # outside the 8-week window and after the week: ignored
    _review(store, "2026-10-01T00:00:00+00:00", "登录异常", "reject", ids["v1"])
    _review(store, "2026-11-29T16:00:00+00:00", "登录异常", "reject", v3)  # Monday 00:00 local: W49
    return ids


@pytest.fixture
def seeded(workspace):
    config, store = workspace
    ids = seed(store)
    return config, store, ids


def _numbers(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    table = {}
    for r in rows:
        key = (r["section"], r["week"], r["category"], r["metric"])
        assert key not in table, f"duplicate row {key}"
        table[key] = float(r["value"])
    return table


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- weeks ---------------------------------------------------------------------------------------

def test_week_parsing_and_default():
    from zoneinfo import ZoneInfo

    from replyloop.evaluation.report import IsoWeek, ReportError

    assert IsoWeek.parse("2026-W48") == IsoWeek(2026, 48)
    assert IsoWeek.parse("2026w05").label == "2026-W05"
    assert IsoWeek.parse("2026-W48").shift(-48).label == "2025-W52"
    assert IsoWeek.parse("2020-W53").shift(1).label == "2021-W01"
    with pytest.raises(ReportError, match="2025 has no ISO week 53"):
        IsoWeek.parse("2025-W53")
    with pytest.raises(ReportError, match="expected an ISO week such as 2026-W48"):
        IsoWeek.parse("48")
    tz = ZoneInfo("Asia/Shanghai")
    assert IsoWeek.last_complete(NOW, tz).label == WEEK
    # Sunday 23:30 local: W48 is still running, the last complete week is W47
    assert IsoWeek.last_complete(dt.datetime(2026, 11, 29, 15, 30, tzinfo=dt.timezone.utc), tz).label == PREV
    start, end = IsoWeek(2026, 48).bounds(tz)
    assert start.astimezone(dt.timezone.utc).isoformat() == "2026-11-22T16:00:00+00:00"
    assert end - start == dt.timedelta(days=7)


def test_wilson_interval_matches_reference_values():
    from replyloop.evaluation.stats import wilson_interval

    low, high = wilson_interval(12, 16)
    assert low == pytest.approx(0.5050, abs=1e-4) and high == pytest.approx(0.8982, abs=1e-4)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_replacements_merge_neighbouring_changes():
    from replyloop.evaluation.report import replacements

    assert replacements("请提供快递条码以便查询。", "请提供电子面单以便查询。") == [("快递条码", "电子面单")]
    assert replacements("请提供快递单号。", "请提供电子面单。") == [("快递单号", "电子面单")]
    assert replacements("您好，请稍等。", "您好。请稍等！") == []  # punctuation only
    assert replacements("退款三天到账", "退款三到五天到账") == [("", "到五")]


# -- the numbers -----------------------------------------------------------------------------------

def test_collect_numbers_match_the_seed(seeded):
    from replyloop.evaluation.report import collect_weekly_report

    config, store, ids = seeded
    r = collect_weekly_report(config, store, now=NOW)
    assert r.label == WEEK and r.complete and not r.empty
    assert r.history[0] == "2026-W41" and r.history[-1] == WEEK and len(r.history) == 8
    this = r.this_week
    assert (this.approved, this.edited, this.rejected) == (15, 3, 2)
    assert this.automation_rate == 0.75 and r.last_week.automation_rate == 0.4
    assert r.automation_change == pytest.approx(0.35)
    cats = r.decisions_by_category[WEEK]
    assert {c: (n.approved, n.edited, n.rejected) for c, n in cats.items()} == {
        "登录异常": (7, 1, 0), "物流查询": (5, 2, 1), "支付失败": (3, 0, 1)}
    assert [(x.old, x.new, x.count) for x in r.replacements] == [("快递条码", "电子面单", 2), ("重启手机", "清除缓存", 1)]
    assert r.edits[WEEK].edits == 3
    assert r.edits[WEEK].mean_distance == pytest.approx((4 / 12 + 4 / 10 + 4 / 9) / 3)
    assert r.edits[PREV].mean_distance == pytest.approx(0.25)
    assert (r.drafts_created, r.drafts_flagged, r.drafts_blocked) == (23, 4, 2)
    assert [(v.rule, v.severity, v.drafts, v.occurrences) for v in r.violations] == [
        ("promise.compensation", "block", 2, 2), ("promise.refund_guarantee", "warn", 2, 3),
        ("term.快递条码", "warn", 1, 1)]
    assert r.approved_violation_drafts == [ids["approved_bad"]]
    assert r.champion.id == ids["v2"] and r.canary.id == ids["v3"] and r.canary.percent == 10
    rates = {m.name: m for m in r.model_rates}
    assert (rates["v2"].role, rates["v2"].reviews, rates["v2"].approved) == ("champion", 16, 12)
    assert (rates["v3"].role, rates["v3"].reviews, rates["v3"].approved) == ("canary", 4, 3)
    assert rates["v2"].ci_low == pytest.approx(0.5050, abs=1e-4)
    assert [(e.action, e.model_name, e.reason) for e in r.events] == [
        ("model.promote", "v2", "gate passed"), ("model.canary", "v5", ""),
        ("model.rollback", "v5", "approvals dropped"), ("model.canary", "v3", "gate passed"),
        ("model.reject", "v4", "退换货政策 dropped 0.08")]
    points = {(p.week, p.role): (p.model_name, p.evaluation_id, p.mean_similarity) for p in r.consistency}
    assert points == {
        ("2026-W46", "champion"): ("v1", ids["e1"], 0.70), (PREV, "champion"): ("v1", ids["e2"], 0.71),
        (WEEK, "champion"): ("v2", ids["e3"], 0.80), (WEEK, "canary"): ("v3", ids["e4"], 0.83)}
    assert r.consistency_change == pytest.approx(0.09)


def expected_numbers(ids) -> dict:
    """numbers.csv for the seed, row by row, worked out from what seed() inserted."""
    e = {}
    decided = {PREV: {"登录异常": (4, 4, 2)},
               WEEK: {"登录异常": (7, 1, 0), "物流查询": (5, 2, 1), "支付失败": (3, 0, 1)}}
    distances = {PREV: {"登录异常": [0.25] * 4},
                 WEEK: {"物流查询": [4 / 12, 4 / 10], "登录异常": [4 / 9]}}
    rate_before = None
    for w in [f"2026-W{k}" for k in range(41, 49)]:
        total = [sum(c[i] for c in decided.get(w, {}).values()) for i in range(3)]
        for metric, value in zip(("approved", "edited", "rejected", "reviewed"), (*total, sum(total))):
            e[("reviews", w, "", metric)] = value
        for cat, counts in decided.get(w, {}).items():
            for metric, value in zip(("approved", "edited", "rejected", "reviewed"), (*counts, sum(counts))):
                e[("reviews", w, cat, metric)] = value
        all_d = [d for ds in distances.get(w, {}).values() for d in ds]
        e[("edits", w, "", "edits")] = len(all_d)
        if all_d:
            e[("edits", w, "", "mean_edit_distance")] = sum(all_d) / len(all_d)
        for cat, ds in distances.get(w, {}).items():
            e[("edits", w, cat, "edits")] = len(ds)
            e[("edits", w, cat, "mean_edit_distance")] = sum(ds) / len(ds)
        e[("automation", w, "", "reviewed")] = sum(total)
        e[("automation", w, "", "approved_unchanged")] = total[0]
        rate = total[0] / sum(total) if sum(total) else None
        if rate is not None:
            e[("automation", w, "", "rate")] = rate
            if rate_before is not None:
                e[("automation", w, "", "change_vs_previous_week")] = rate - rate_before
        rate_before = rate
    evaluations = {("2026-W46", "champion"): ("v1", "e1", 0.70, {"登录异常": 0.72, "物流查询": 0.68}),
                   (PREV, "champion"): ("v1", "e2", 0.71, {"登录异常": 0.73, "物流查询": 0.69}),
                   (WEEK, "champion"): ("v2", "e3", 0.80, {"登录异常": 0.82, "物流查询": 0.78}),
                   (WEEK, "canary"): ("v3", "e4", 0.83, {"登录异常": 0.85, "物流查询": 0.81})}
    for (w, role), (model, evaluation, mean, cats) in evaluations.items():
        e[("consistency", w, "", f"{role}_model_id")] = ids[model]
        e[("consistency", w, "", f"{role}_evaluation_id")] = ids[evaluation]
        e[("consistency", w, "", f"{role}_n")] = 30
        e[("consistency", w, "", f"{role}_mean_similarity")] = mean
        for cat, value in cats.items():
            e[("consistency", w, cat, f"{role}_mean_similarity")] = value
        e[("consistency", w, "", f"{role}_mean_chrf")] = mean - 0.5
        for cat, value in cats.items():
            e[("consistency", w, cat, f"{role}_mean_chrf")] = value - 0.5
        e[("consistency", w, "", f"{role}_unknown_share")] = 0.74
    e[("consistency", WEEK, "", "champion_change_vs_previous_week")] = 0.80 - 0.71
    e[("consistency", WEEK, "", "champion_chrf_change_vs_previous_week")] = 0.30 - 0.21
    e[("replacements", WEEK, "快递条码 → 电子面单", "count")] = 2
    e[("replacements", WEEK, "重启手机 → 清除缓存", "count")] = 1
    e.update({("violations", WEEK, "", "drafts_created"): 23,  # 20 reviewed + 2 pending + the W49 review's draft
              ("violations", WEEK, "", "drafts_flagged"): 4, ("violations", WEEK, "", "drafts_blocked"): 2,
              ("violations", WEEK, "", "approved_with_violations"): 1,
              ("violations", WEEK, "promise.compensation", "drafts"): 2,
              ("violations", WEEK, "promise.compensation", "occurrences"): 2,
              ("violations", WEEK, "promise.refund_guarantee", "drafts"): 2,
              ("violations", WEEK, "promise.refund_guarantee", "occurrences"): 3,
              ("violations", WEEK, "term.快递条码", "drafts"): 1,
              ("violations", WEEK, "term.快递条码", "occurrences"): 1,
              ("approved_violations", WEEK, "promise.refund_guarantee", "drafts"): 1})
    e.update({("models", WEEK, "champion", "model_id"): ids["v2"], ("models", WEEK, "canary", "model_id"): ids["v3"],
              ("models", WEEK, "canary", "percent"): 10, ("models", WEEK, "", "promotions"): 1,
              ("models", WEEK, "", "canary_changes"): 2, ("models", WEEK, "", "rollbacks"): 1,
              ("models", WEEK, "", "rejections"): 1})
    # Wilson 95%: 12/16 -> [0.5050, 0.8982], 3/4 -> [0.3006, 0.9544] (reference values)
    for name, reviews, approved, low, high in (("v2", 16, 12, 0.505017, 0.898179), ("v3", 4, 3, 0.300642, 0.954413)):
        e.update({("model_rates", WEEK, name, "model_id"): ids[name],
                  ("model_rates", WEEK, name, "reviews"): reviews,
                  ("model_rates", WEEK, name, "approved_unchanged"): approved,
                  ("model_rates", WEEK, name, "rate"): approved / reviews,
                  ("model_rates", WEEK, name, "ci_low"): low, ("model_rates", WEEK, name, "ci_high"): high})
    # canary - champion, Newcombe from the two Wilson intervals above: 0.75 - 0.75 = 0,
    # -sqrt((0.75-0.300642)^2 + (0.898179-0.75)^2), +sqrt((0.954413-0.75)^2 + (0.75-0.505017)^2)
    e.update({("model_rates", WEEK, "canary - champion", "difference"): 0.0,
              ("model_rates", WEEK, "canary - champion", "ci_low"): -0.473159,
              ("model_rates", WEEK, "canary - champion", "ci_high"): 0.319063})
    return e


def test_csv_holds_every_seeded_number(seeded, tmp_path):
    from replyloop.evaluation.report import build_weekly_report

    config, store, ids = seeded
    report = build_weekly_report(config, store, week=WEEK, out=tmp_path / "out", now=NOW)
    n = _numbers(report.files["numbers.csv"])
    expected = expected_numbers(ids)
    assert sorted(set(n) - set(expected)) == []   # nothing the seed does not explain
    assert sorted(set(expected) - set(n)) == []   # nothing missing
    for key, value in expected.items():
        assert n[key] == pytest.approx(value, abs=1e-6), key


def test_report_md_and_charts(seeded, tmp_path):
    from replyloop.evaluation.report import build_weekly_report

    config, store, ids = seeded
    report = build_weekly_report(config, store, out=tmp_path / "r", now=NOW)
    md = report.files["report.md"].read_text(encoding="utf-8")
    assert md.startswith(f"# Weekly consistency report {WEEK}\n")
    assert "2026-11-23 to 2026-11-29 (Asia/Shanghai)" in md
    assert "**75.0%** (15 of 20 reviewed drafts); 2026-W47: 40.0% (+35.0 pp)" in md
    assert ("Champion consistency: **0.800** (+0.090 vs 2026-W47: 0.710); chrF **0.300** (+0.090 vs 2026-W47:"
            " 0.210)") in md
    # every seeded evaluation had 74% unknown reference characters (MiniLM on Chinese): the report says so
    assert ("**The embedding model could not read the references** of 4 of these evaluations (up to 74.0% of"
            " their characters were unknown tokens, limit 20.0%)") in md
    assert "| week | role | model | overall chrF | unknown tokens | 物流查询 | 登录异常 |" in md
    assert f"| {WEEK} | champion | v2 (#{ids['v2']}) | 0.300 | 74.0% | 0.280 | 0.320 |" in md
    assert "| 快递条码 | 电子面单 | 2 |" in md
    assert f"**1 approved drafts had violations** (should be 0): drafts #{ids['approved_bad']}." in md
    assert f"| v2 (#{ids['v2']}) | champion | 16 | 12 | 75.0% | 50.5% – 89.8% |" in md
    assert "Canary − champion: +0.0 points (95% interval -47.3 to +31.9, Newcombe)" in md
    assert "| reject | v4 (#" in md and "退换货政策 dropped 0.08" in md
    assert "Canary: v3 (#%d) at 10%% of conversations." % ids["v3"] in md
    for name in ("consistency.png", "reviews.png", "automation.png", "violations.png"):
        assert f"]({name})" in md
        width, height = _png_size(report.files[name])
        assert 600 <= width <= 1400 and 300 <= height <= 700, (name, width, height)
    import matplotlib.image

    image = matplotlib.image.imread(report.files["reviews.png"])
    assert image.shape[2] in (3, 4) and image.std() > 0.05  # not blank
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(report.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away


def test_empty_week_says_so(workspace, tmp_path):
    from replyloop.evaluation.report import build_weekly_report

    config, store = workspace
    report = build_weekly_report(config, store, week="2026-W10", out=tmp_path / "empty", now=NOW)
    assert report.empty
    md = report.files["report.md"].read_text(encoding="utf-8")
    assert "**No activity in 2026-W10**" in md
    assert "0 approved drafts had violations." in md
    n = _numbers(report.files["numbers.csv"])
    assert n[("reviews", "2026-W10", "", "reviewed")] == 0
    assert n[("violations", "2026-W10", "", "drafts_created")] == 0
    assert ("automation", "2026-W10", "", "rate") not in n  # no rate without reviews
    for name in ("consistency.png", "reviews.png", "automation.png", "violations.png"):
        assert _png_size(report.files[name])[0] > 300


def test_rewrite_replaces_the_previous_report_but_refuses_foreign_dirs(seeded, tmp_path):
    from replyloop.evaluation.report import ReportError, build_weekly_report

    config, store, _ = seeded
    first = build_weekly_report(config, store, week=WEEK, now=NOW)
    assert first.out_dir == config.reports_dir / WEEK
    again = build_weekly_report(config, store, week=WEEK, now=NOW)
    assert again.out_dir == first.out_dir and (first.out_dir / "report.md").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="holds other files \\(notes.txt\\)"):
        build_weekly_report(config, store, week=WEEK, out=foreign, now=NOW)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_charts_without_a_cjk_font_use_short_labels(seeded, tmp_path):
    from replyloop.evaluation.charts import NO_FONT, render_charts
    from replyloop.evaluation.report import collect_weekly_report, render_markdown

    config, store, _ = seeded
    report = collect_weekly_report(config, store, now=NOW)
    charts = render_charts(report, tmp_path, font=NO_FONT)
    assert charts.labels == {"C1": "支付失败", "C2": "物流查询", "C3": "登录异常", "C4": "term.快递条码"}
    report.chart_labels = charts.labels
    assert "Chart labels (no CJK font was available for the charts): C1 = 支付失败" in render_markdown(report, charts.files)


def test_a_cjk_font_is_found():
    from replyloop.evaluation.charts import find_cjk_font

    font = find_cjk_font()
    assert font.cjk, "no CJK font: install mplfonts (a replyloop dependency)"
    assert font.source in ("env", "mplfonts", "system")


def test_cli_report_weekly(seeded, tmp_path):
    config, store, ids = seeded
    out = tmp_path / "cli-out"
    result = cli("report", "weekly", "--week", WEEK, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"Weekly report {WEEK} written to {out}" in result.output
    assert "automation 75.0% (+35.0 pp)" in result.output
    assert (out / "report.md").exists() and (out / "numbers.csv").exists()
    bad = cli("report", "weekly", "--week", "2026-W60")
    assert bad.exit_code == 2
    assert bad.output.strip().endswith("Error: week '2026-W60': 2026 has no ISO week 60")


def test_bad_font_override_is_named_and_skipped(monkeypatch, tmp_path, caplog):
    from replyloop.evaluation.charts import find_cjk_font

    bogus = tmp_path / "nofont.ttf"
    bogus.write_bytes(b"not a font")
    monkeypatch.setenv("REPLYLOOP_CJK_FONT", str(bogus))
    find_cjk_font.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="replyloop.report"):
            font = find_cjk_font()
    finally:
        find_cjk_font.cache_clear()
    assert f"REPLYLOOP_CJK_FONT={bogus} is not a readable font with Chinese glyphs" in caplog.text
    assert font.cjk and font.source != "env"


@pytest.mark.slow
def test_report_weekly_in_a_real_process(workspace):
    from helpers import cli_subprocess

    config, _ = workspace
    result = cli_subprocess("report", "weekly", "--week", "2026-W10")
    assert result.returncode == 0, result.stderr
    out = config.reports_dir / "2026-W10"
    assert result.stdout.startswith(f"Weekly report 2026-W10 written to {out}\nNo activity in 2026-W10.\n")
    assert "No CJK-capable font" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["automation.png", "consistency.png", "numbers.csv",
                                                      "report.md", "reviews.png", "violations.png"]
