"""Evaluate a registered model on the held-out split of the snapshot it was trained on.

``evaluate_model`` drafts (greedy, batched, left-padded) a reply to every held-out question,
scores the drafts against the approved references with sentence embeddings and with chrF
(character n-grams), checks that the embedding model can read the references (the share of
reference characters its tokenizer maps to ``[UNK]``), runs each
draft through the policy engine, re-drafts the same questions with the champion for a fair
comparison, applies the promotion gate, and stores the result in ``evaluations``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from replyloop.evaluation import consistency, degeneration, gate
from replyloop.evaluation.embeddings import UNREADABLE_FIX, Encoder
from replyloop import timeutil
from replyloop.config import Config
from replyloop.errors import ReplyloopError
from replyloop.i18n import N_, _, language, pgettext
from replyloop.phrases import Phrase, localized
from replyloop.registry import Registry
from replyloop.store import Store

MAX_EXAMPLES = 3


class EvaluationError(ReplyloopError):
    """Evaluation failed"""


@dataclass
class EvalReport:
    model_id: int
    model_name: str
    snapshot_hash: str
    embedding_model: str
    candidate: consistency.ConsistencyResult
    champion: consistency.ConsistencyResult | None
    against_model_id: int | None
    against_model_name: str | None
    violations: dict                       # rule -> {"severity", "count", "examples": [...]}
    verdicts: dict                         # pass / warn / block -> drafts
    policy_available: bool
    items: list[dict]
    gate: gate.GateResult
    timings: dict = field(default_factory=dict)
    unknown_share: float | None = None     # share of reference characters the embedding tokenizer cannot read
    max_unknown_share: float = 0.2
    degeneration: degeneration.DegenerationResult | None = None
    champion_degeneration: degeneration.DegenerationResult | None = None
    golden: dict | None = None             # golden23: the golden suites' run and its comparison with the champion
    id: int | None = None
    created_at: str = ""

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def embedding_readable(self) -> bool:
        return self.unknown_share is None or self.unknown_share <= self.max_unknown_share

    @property
    def warnings(self) -> list[str]:
        """What the reader must know before trusting the embedding numbers (Phrases: English as a
        str for --json; ``localized()`` for people)."""
        if self.embedding_readable:
            return []
        return [Phrase(N_("Warning: {share} of the reference characters are unknown tokens ([UNK]) for the embedding"
                          " model {model} (limit {limit}, evaluation.max_unknown_share): its similarity scores measure"
                          " little more than punctuation, so the gate does not count them and chrF decides. Fix: {fix}."),
                       share=f"{self.unknown_share:.0%}", model=self.embedding_model,
                       limit=f"{self.max_unknown_share:.0%}", fix=UNREADABLE_FIX)]

    def to_dict(self) -> dict:
        return {
            "id": self.id, "created_at": self.created_at,
            "model": {"id": self.model_id, "name": self.model_name},
            "snapshot_hash": self.snapshot_hash,
            "embedding_model": self.embedding_model,
            "unknown_share": self.unknown_share,
            "max_unknown_share": self.max_unknown_share,
            "embedding_readable": self.embedding_readable,
            "warnings": self.warnings,
            "against": None if self.against_model_id is None else
            {"id": self.against_model_id, "name": self.against_model_name},
            "n": self.candidate.n,
            "consistency": _public(self.candidate),
            "champion_consistency": None if self.champion is None else _public(self.champion),
            "policy": {"available": self.policy_available, "verdicts": self.verdicts, "violations": self.violations},
            "gate": self.gate.to_dict(),
            "degeneration": None if self.degeneration is None else self.degeneration.to_dict(),
            "champion_degeneration": None if self.champion_degeneration is None else
            self.champion_degeneration.to_dict(),
            "items": self.items,
            "timings": self.timings,
            "golden": self.golden,
        }

    def summary_markdown(self, verdict: bool = True) -> str:
        """A short Markdown summary in the current language; ends with the gate verdict unless
        ``verdict`` is False."""
        c, ch = self.candidate, self.champion
        held_out = _("Held-out questions: {n} from snapshot `{snapshot}`; embeddings: {model}").format(
            n=c.n, snapshot=self.snapshot_hash, model=self.embedding_model)
        if self.unknown_share is not None:
            held_out += _(" ({share} of reference characters unknown to it)").format(share=f"{self.unknown_share:.0%}")
        lines = ["## " + _("Evaluation of {name} (model {id})").format(name=self.model_name, id=self.model_id), "",
                 held_out + _("; chrF: character n-grams (sacrebleu)."), ""]
        if self.warnings:
            lines += [f"**{localized(w)}**" for w in self.warnings] + [""]
        head = "| {} | n | {} | {} | chrF |".format(_("category"), _("mean"),
                                                   _("share >= {threshold}").format(threshold=f"{c.threshold:.2f}"))
        sep = "| --- | ---: | ---: | ---: | ---: |"
        if ch is not None:
            head += " {} | {} |".format(_("champion ({name}) mean").format(name=self.against_model_name),
                                        _("champion chrF"))
            sep += " ---: | ---: |"
        lines += [head, sep]
        rows = [("**" + pgettext("all categories", "all") + "**", c.n, c.mean, c.share_above, c.chrf_mean,
                 (ch.mean, ch.chrf_mean) if ch else None)]
        for cat, s in c.by_category.items():
            champ = ch.by_category.get(cat) if ch else None
            rows.append((cat, s.n, s.mean, s.share_above, s.chrf, champ and (champ.mean, champ.chrf)))
        for name, n, mean, share, chrf, champ in rows:
            line = f"| {name} | {n} | {mean:.3f} | {share:.0%} | {_num(chrf)} |"
            if ch is not None:
                line += f" {_num(champ and champ[0])} | {_num(champ and champ[1])} |"
            lines.append(line)
        if c.self_consistency:
            worst = sorted(c.self_consistency.items(), key=lambda kv: kv[1]["mean"])[:5]
            source = {"column": pgettext("intent source", "column"),
                      "reference-similarity": pgettext("intent source", "reference-similarity")}.get(
                c.intent_source, c.intent_source)
            lines += ["", _("Self-consistency (mean pairwise similarity / chrF of paraphrase drafts, by {source}),"
                            " lowest first: {groups}").format(
                source=source, groups=", ".join(f"{k} {v['mean']:.3f} / {_num(v.get('chrf'))} (n={v['n']})"
                                                for k, v in worst))]
        if self.policy_available:
            verdicts = ", ".join(f"{_verdict_word(k)} {v}" for k, v in sorted(self.verdicts.items()))
            lines += ["", _("Policy: {verdicts}").format(verdicts=verdicts)]
        else:
            lines += ["", _("Policy: engine not available (drafts not checked)")]
        for rule, v in sorted(self.violations.items()):
            example = v["examples"][0]["match"] if v["examples"] else ""
            lines.append(f"- `{rule}` ({_verdict_word(v['severity'])}): {v['count']}"
                         + (_(", e.g. “{example}”").format(example=example) if example else ""))
        if self.degeneration is not None:
            d, cd = self.degeneration, self.champion_degeneration
            lines += ["", _("Degeneration: repetitive drafts {repetitive}, off-length {off_length}, distinct-2 /"
                            " references {distinct2}, largest near-identical group {template} (references"
                            " {references})").format(
                repetitive=f"{d.repetitive_share:.0%}", off_length=f"{d.off_length_share:.0%}",
                distinct2=f"{d.distinct2_ratio:.2f}", template=f"{d.template_share:.0%}",
                references=f"{d.reference_template_share:.0%}")
                + ("" if cd is None else _("; champion {repetitive}, {off_length}, {distinct2}, {template}").format(
                    repetitive=f"{cd.repetitive_share:.0%}", off_length=f"{cd.off_length_share:.0%}",
                    distinct2=f"{cd.distinct2_ratio:.2f}", template=f"{cd.template_share:.0%}"))]
        if verdict:
            lines += ["", "```", self.gate.verdict(), "```"]
        return "\n".join(lines) + "\n"


VERDICT_WORDS = {"pass": N_("pass"), "warn": N_("warn"), "block": N_("block")}


def _verdict_word(value: str) -> str:
    """A policy verdict or severity in the current language (an unknown one as it is)."""
    msgid = VERDICT_WORDS.get(value)
    return _(msgid) if msgid else value


def _num(value) -> str:
    return _("n/a") if value is None else f"{value:.3f}"


def _public(result: consistency.ConsistencyResult) -> dict:
    d = result.to_dict()
    d.pop("similarities", None)
    d.pop("groups", None)
    d.pop("chrf", None)
    return d


def _at_cap(tokenizer, drafts: list[str], max_new_tokens: int) -> list[bool]:
    """Whether each draft (re-tokenised) reached the token cap, i.e. was cut rather than finished."""
    lengths = [len(ids) for ids in tokenizer(drafts, add_special_tokens=False)["input_ids"]]
    return [n >= max_new_tokens - 2 for n in lengths]


def _resolve_against(registry: Registry, model: dict, against: str | int | None) -> dict | None:
    if against is None or against == "none":
        return None
    if against == "champion":
        champ = registry.champion()
        return None if champ is None or champ["id"] == model["id"] else champ
    other = registry.get(against)
    return None if other["id"] == model["id"] else other


def _policy_summary(engine, questions: list[str], drafts: list[str]):
    from replyloop.drafting import check_policies

    verdicts: Counter = Counter()
    rules: dict[str, dict] = {}
    per_item = []
    for q, text in zip(questions, drafts):
        verdict, violations = check_policies(engine, text)
        verdicts[verdict] += 1
        per_item.append((verdict, violations))
        if engine is None:
            continue
        for v in violations:
            entry = rules.setdefault(v["rule"], {"severity": v["severity"], "count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES:
                entry["examples"].append({"question": q, "draft": text, "match": v.get("match", "")})
    return dict(verdicts), rules, per_item


def evaluate_model(config: Config, store: Store, model_id: int | str, against: str | int | None = "champion", *,
                   encoder: Encoder | None = None, policy_engine=None, max_new_tokens: int | None = None,
                   batch_size: int | None = None, min_new_tokens: int = 0, actor: str = "cli",
                   snapshot: str | None = None) -> EvalReport:
    """Evaluate ``model_id`` (id, name or adapter path) against ``against`` ("champion", "none",
    or another model) on the held-out split of the model's own snapshot (or of ``snapshot``, for
    an adapter trained outside the store, e.g. a team's existing lora-scripts adapter); store
    and return the report."""
    from replyloop.drafting import LocalModels, generate, load_policy_engine

    opts = config.file.evaluation
    registry = Registry(store, keep_adapters=config.file.training.keep_adapters)
    model = registry.get(model_id)
    snapshot_hash = snapshot or model["snapshot_hash"]
    if not snapshot_hash:
        raise EvaluationError(f"model {model['name']} has no dataset snapshot in its manifest: its held-out"
                              " questions are unknown (name one with --snapshot, see `replyloop data snapshot`)")
    heldout = store.snapshot_samples(snapshot_hash, "heldout")
    if not heldout:
        raise EvaluationError(f"snapshot {snapshot_hash} has no held-out samples")
    other = _resolve_against(registry, model, against)
    questions = [r["prompt"] for r in heldout]
    references = [r["response"] for r in heldout]
    categories = [r["category"] for r in heldout]
    intents = [r.get("intent") for r in heldout]
    max_new = max_new_tokens or opts.max_new_tokens
    bs = batch_size or opts.batch_size
    timings = {}

    local = LocalModels(device=config.file.drafting.device)
    t0 = time.perf_counter()
    m, tok = local.activate(model)
    drafts = generate(m, tok, questions, max_new_tokens=max_new, batch_size=bs, min_new_tokens=min_new_tokens,
                      prompt_format=local.prompt_format)
    timings["generate_s"] = time.perf_counter() - t0
    champion_drafts = None
    if other is not None:
        t0 = time.perf_counter()
        m, tok = local.activate(other)
        champion_drafts = generate(m, tok, questions, max_new_tokens=max_new, batch_size=bs,
                                   min_new_tokens=min_new_tokens, prompt_format=local.prompt_format)
        timings["generate_champion_s"] = time.perf_counter() - t0

    encoder = encoder or Encoder.from_config(config, store)
    t0 = time.perf_counter()
    unknown = encoder.unknown_share(references)
    ref_vecs = encoder.encode(references)
    cand = consistency.score(encoder.encode(drafts), ref_vecs, categories, intents, threshold=opts.threshold,
                             draft_texts=drafts, reference_texts=references)
    champ = None
    if champion_drafts is not None:
        champ = consistency.score(encoder.encode(champion_drafts), ref_vecs, categories, intents,
                                  threshold=opts.threshold, draft_texts=champion_drafts, reference_texts=references)
    timings["embed_s"] = time.perf_counter() - t0

    degen = degeneration.measure(drafts, references, opts.degeneration, _at_cap(tok, drafts, max_new))
    champ_degen = None
    if champion_drafts:
        champ_degen = degeneration.measure(champion_drafts, references, opts.degeneration,
                                           _at_cap(tok, champion_drafts, max_new))

    engine = policy_engine if policy_engine is not None else load_policy_engine(config)
    verdicts, rules, per_item = _policy_summary(engine, questions, drafts)
    blocks = {rule: v["count"] for rule, v in rules.items() if v["severity"] == "block"}
    example = next((v["examples"][0]["match"] for v in rules.values() if v["severity"] == "block" and v["examples"]), "")
    result = gate.decide(
        mean=cand.mean, by_category={k: v.mean for k, v in cand.by_category.items()},
        block_count=None if engine is None else verdicts.get("block", 0), block_rules=blocks,
        champion_mean=champ.mean if champ else None,
        champion_by_category={k: v.mean for k, v in champ.by_category.items()} if champ else None,
        floor=opts.floor, tolerance=opts.tolerance, category_margin=opts.category_margin, block_example=example,
        chrf_mean=cand.chrf_mean, chrf_by_category={k: v.chrf for k, v in cand.by_category.items()},
        champion_chrf_mean=champ.chrf_mean if champ else None,
        champion_chrf_by_category={k: v.chrf for k, v in champ.by_category.items()} if champ else None,
        chrf_floor=opts.chrf_floor, chrf_tolerance=opts.chrf_tolerance,
        chrf_category_margin=opts.chrf_category_margin, unknown_share=unknown,
        max_unknown_share=opts.max_unknown_share, embedding_model=encoder.name, fix=UNREADABLE_FIX,
        degeneration=degen, champion_degeneration=champ_degen, degeneration_limits=opts.degeneration)

    # golden23: the golden suites (evaluation.golden_gate) are one more criterion of the gate
    from replyloop.evaluation import golden

    golden_criterion, golden_run, golden_changes = golden.gate_check(
        config, store, model, other, engine=engine, encoder=encoder, generate=golden.local_generator(
            config, max_new_tokens=max_new, batch_size=bs, min_new_tokens=min_new_tokens, local=local))
    if golden_criterion is not None:
        result = gate.with_criterion(result, golden_criterion)

    items = []
    for i, row in enumerate(heldout):
        item = {"sample_id": row["id"], "question": questions[i], "reference": references[i], "draft": drafts[i],
                "category": categories[i], "intent": cand.groups[i], "similarity": cand.similarities[i],
                "chrf": cand.chrf[i],
                "verdict": per_item[i][0], "violations": [v["rule"] for v in per_item[i][1]],
                "degeneration": degen.per_draft[i]}
        if champ is not None:
            item["champion_draft"] = champion_drafts[i]
            item["champion_similarity"] = champ.similarities[i]
            item["champion_chrf"] = champ.chrf[i]
        items.append(item)

    report = EvalReport(model_id=model["id"], model_name=model["name"], snapshot_hash=snapshot_hash,
                        embedding_model=encoder.name, candidate=cand, champion=champ,
                        against_model_id=other and other["id"], against_model_name=other and other["name"],
                        violations=rules, verdicts=verdicts, policy_available=engine is not None, items=items,
                        gate=result, timings=timings, created_at=timeutil.now_iso(), unknown_share=unknown,
                        max_unknown_share=opts.max_unknown_share, degeneration=degen,
                        champion_degeneration=champ_degen)
    if golden_run is not None:
        report.golden = {"run_id": golden_run.id, "mode": config.file.evaluation.golden_gate,
                         "n": len(golden_run.cases), "failed": [c.case_id for c in golden_run.failed],
                         "changes": golden_changes}
    _store(store, report, actor)
    if golden_run is not None:
        golden.link_evaluation(store, golden_run, report.id)
    return report


def _store(store: Store, report: EvalReport, actor: str) -> None:
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO evaluations (model_id, snapshot_hash, against_model_id, embedding_model, n, mean_similarity,"
            " share_above, mean_chrf, unknown_share, by_category, self_consistency, violations, gate_passed, gate,"
            " report, summary_md, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (report.model_id, report.snapshot_hash, report.against_model_id, report.embedding_model,
             report.candidate.n, report.candidate.mean, report.candidate.share_above, report.candidate.chrf_mean,
             report.unknown_share,
             json.dumps({k: v.__dict__ for k, v in report.candidate.by_category.items()}, ensure_ascii=False),
             json.dumps(report.candidate.self_consistency, ensure_ascii=False),
             json.dumps(report.violations, ensure_ascii=False), int(report.gate.passed),
             json.dumps(report.gate.to_dict()["criteria"], ensure_ascii=False), "{}", "", report.created_at))
        report.id = cur.lastrowid
        db.execute("UPDATE evaluations SET report = ?, summary_md = ? WHERE id = ?",
                   (json.dumps(report.to_dict(), ensure_ascii=False), _stored_summary(report), report.id))
        db.execute("UPDATE models SET last_evaluation_id = ? WHERE id = ?", (report.id, report.model_id))
        store.audit(actor, "model.evaluate", "model", report.model_id,
                    {"evaluation_id": report.id, "gate_passed": report.gate.passed,
                     "mean": round(report.candidate.mean, 4),
                     "chrf": None if report.candidate.chrf_mean is None else round(report.candidate.chrf_mean, 4),
                     "against": report.against_model_id})


def _stored_summary(report: EvalReport) -> str:
    """``evaluations.summary_md``: stored English, whatever the language of the run (issue 22)."""
    with language("en"):
        return report.summary_markdown()


def load_report(store: Store, evaluation_id: int) -> dict:
    row = store.one("SELECT report FROM evaluations WHERE id = ?", (evaluation_id,))
    if row is None:
        from replyloop.errors import NotFoundError

        raise NotFoundError(f"evaluation {evaluation_id} not found")
    return json.loads(row["report"])
