"""Evaluate a registered model on the held-out split of the snapshot it was trained on.

``evaluate_model`` drafts (greedy, batched, left-padded) a reply to every held-out question,
scores the drafts against the approved references with sentence embeddings, runs each
draft through the policy engine, re-drafts the same questions with the champion for a fair
comparison, applies the promotion gate, and stores the result in ``evaluations``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from evaluation import consistency, gate
from evaluation.embeddings import Encoder
from replyloop import timeutil
from replyloop.config import Config
from replyloop.errors import ReplyloopError
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
    id: int | None = None
    created_at: str = ""

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_dict(self) -> dict:
        return {
            "id": self.id, "created_at": self.created_at,
            "model": {"id": self.model_id, "name": self.model_name},
            "snapshot_hash": self.snapshot_hash,
            "embedding_model": self.embedding_model,
            "against": None if self.against_model_id is None else
            {"id": self.against_model_id, "name": self.against_model_name},
            "n": self.candidate.n,
            "consistency": _public(self.candidate),
            "champion_consistency": None if self.champion is None else _public(self.champion),
            "policy": {"available": self.policy_available, "verdicts": self.verdicts, "violations": self.violations},
            "gate": self.gate.to_dict(),
            "items": self.items,
            "timings": self.timings,
        }

    def summary_markdown(self, verdict: bool = True) -> str:
        """A short Markdown summary; ends with the gate verdict unless ``verdict`` is False."""
        c, ch = self.candidate, self.champion
        lines = [f"## Evaluation of {self.model_name} (model {self.model_id})", "",
                 f"Held-out questions: {c.n} from snapshot `{self.snapshot_hash}`; embeddings: {self.embedding_model}.",
                 ""]
        head = "| category | n | mean | share >= %.2f |" % c.threshold
        sep = "| --- | ---: | ---: | ---: |"
        if ch is not None:
            head += f" champion ({self.against_model_name}) mean |"
            sep += " ---: |"
        lines += [head, sep]
        rows = [("**all**", c.n, c.mean, c.share_above, ch.mean if ch else None)]
        for cat, s in c.by_category.items():
            rows.append((cat, s.n, s.mean, s.share_above, ch.by_category[cat].mean if ch else None))
        for name, n, mean, share, champ in rows:
            line = f"| {name} | {n} | {mean:.3f} | {share:.0%} |"
            if ch is not None:
                line += f" {champ:.3f} |"
            lines.append(line)
        if c.self_consistency:
            worst = sorted(c.self_consistency.items(), key=lambda kv: kv[1]["mean"])[:5]
            lines += ["", f"Self-consistency (mean pairwise similarity of paraphrase drafts, by {c.intent_source}),"
                      " lowest first: " + ", ".join(f"{k} {v['mean']:.3f} (n={v['n']})" for k, v in worst)]
        lines += ["", "Policy: " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items()))
                  if self.policy_available else "Policy: engine not available (drafts not checked)"]
        for rule, v in sorted(self.violations.items()):
            example = v["examples"][0]["match"] if v["examples"] else ""
            lines.append(f"- `{rule}` ({v['severity']}): {v['count']}" + (f", e.g. “{example}”" if example else ""))
        if verdict:
            lines += ["", "```", self.gate.verdict(), "```"]
        return "\n".join(lines) + "\n"


def _public(result: consistency.ConsistencyResult) -> dict:
    d = result.to_dict()
    d.pop("similarities", None)
    d.pop("groups", None)
    return d


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
    ref_vecs = encoder.encode(references)
    cand = consistency.score(encoder.encode(drafts), ref_vecs, categories, intents, threshold=opts.threshold)
    champ = None
    if champion_drafts is not None:
        champ = consistency.score(encoder.encode(champion_drafts), ref_vecs, categories, intents,
                                  threshold=opts.threshold)
    timings["embed_s"] = time.perf_counter() - t0

    engine = policy_engine if policy_engine is not None else load_policy_engine(config)
    verdicts, rules, per_item = _policy_summary(engine, questions, drafts)
    blocks = {rule: v["count"] for rule, v in rules.items() if v["severity"] == "block"}
    example = next((v["examples"][0]["match"] for v in rules.values() if v["severity"] == "block" and v["examples"]), "")
    result = gate.decide(
        mean=cand.mean, by_category={k: v.mean for k, v in cand.by_category.items()},
        block_count=None if engine is None else verdicts.get("block", 0), block_rules=blocks,
        champion_mean=champ.mean if champ else None,
        champion_by_category={k: v.mean for k, v in champ.by_category.items()} if champ else None,
        floor=opts.floor, tolerance=opts.tolerance, category_margin=opts.category_margin, block_example=example)

    items = []
    for i, row in enumerate(heldout):
        item = {"sample_id": row["id"], "question": questions[i], "reference": references[i], "draft": drafts[i],
                "category": categories[i], "intent": cand.groups[i], "similarity": cand.similarities[i],
                "verdict": per_item[i][0], "violations": [v["rule"] for v in per_item[i][1]]}
        if champ is not None:
            item["champion_draft"] = champion_drafts[i]
            item["champion_similarity"] = champ.similarities[i]
        items.append(item)

    report = EvalReport(model_id=model["id"], model_name=model["name"], snapshot_hash=snapshot_hash,
                        embedding_model=encoder.name, candidate=cand, champion=champ,
                        against_model_id=other and other["id"], against_model_name=other and other["name"],
                        violations=rules, verdicts=verdicts, policy_available=engine is not None, items=items,
                        gate=result, timings=timings, created_at=timeutil.now_iso())
    _store(store, report, actor)
    return report


def _store(store: Store, report: EvalReport, actor: str) -> None:
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO evaluations (model_id, snapshot_hash, against_model_id, embedding_model, n, mean_similarity,"
            " share_above, by_category, self_consistency, violations, gate_passed, gate, report, summary_md,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (report.model_id, report.snapshot_hash, report.against_model_id, report.embedding_model,
             report.candidate.n, report.candidate.mean, report.candidate.share_above,
             json.dumps({k: v.__dict__ for k, v in report.candidate.by_category.items()}, ensure_ascii=False),
             json.dumps(report.candidate.self_consistency, ensure_ascii=False),
             json.dumps(report.violations, ensure_ascii=False), int(report.gate.passed),
             json.dumps(report.gate.to_dict()["criteria"], ensure_ascii=False), "{}", "", report.created_at))
        report.id = cur.lastrowid
        db.execute("UPDATE evaluations SET report = ?, summary_md = ? WHERE id = ?",
                   (json.dumps(report.to_dict(), ensure_ascii=False), report.summary_markdown(), report.id))
        db.execute("UPDATE models SET last_evaluation_id = ? WHERE id = ?", (report.id, report.model_id))
        store.audit(actor, "model.evaluate", "model", report.model_id,
                    {"evaluation_id": report.id, "gate_passed": report.gate.passed,
                     "mean": round(report.candidate.mean, 4), "against": report.against_model_id})


def load_report(store: Store, evaluation_id: int) -> dict:
    row = store.one("SELECT report FROM evaluations WHERE id = ?", (evaluation_id,))
    if row is None:
        from replyloop.errors import NotFoundError

        raise NotFoundError(f"evaluation {evaluation_id} not found")
    return json.loads(row["report"])
