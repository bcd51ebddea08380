"""Golden suites: must-pass questions with assertions, run on demand and by the promotion gate.

A suite is a YAML file in the workspace's ``evaluation.golden_dir`` (default ``evals/``)::

    # evals/returns.yaml — run with: replyloop eval champion --suite returns
    cases:
      - id: custom-no-7day                 # unique across every file of the directory
        question: 定制商品可以七天无理由退货吗？
        category: 退换货政策               # optional
        intent: custom-return              # optional
        reference: 定制商品不适用七天无理由退货，质量问题可以申请售后。   # optional (similar, chrf)
        assert:
          - {type: contains, value: [不适用, 不支持]}           # any of them (mode: all for all)
          - {type: not-contains, value: 全额赔付}
          - {type: regex, value: '定制.{0,6}不'}
          - {type: chrf, threshold: 0.3}
          - {type: similar, threshold: 0.8}                     # default: evaluation.threshold
          - {type: policy-clean}                                # no block (allow_warn: false: no warn either)
          - {type: terminology}                                 # no terminology "avoid" term
          - {type: max-chars, value: 120}
          - {type: not-repetitive}                              # threshold: 0.2 (repeated 4-gram share)

``contains`` / ``not-contains`` match through the policy engine's reading of a reply
(``evaluation.readthrough`` then ``evaluation.textmap``): full-width, Traditional Chinese,
spacing, punctuation and markup do not matter. A malformed directory is rejected whole
(``GoldenError``, every problem with file, line and case id), like policy files.

Running: ``run_suites`` drafts every case's question with a model (batched; cached in
``golden_drafts`` by (model, generation settings, question), so re-running after an assertion edit
drafts nothing new), checks every assertion and stores the run in ``golden_runs`` /
``golden_case_results``. ``compare`` gives per-case "fixed" / "newly broken" between a
champion's run and a challenger's; ``gate_check`` turns that into a gate criterion.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replyloop.errors import ReplyloopError
from replyloop.i18n import N_, _, pgettext
from replyloop.phrases import Phrase, localized
from replyloop.yamlfile import YamlDoc, describe_error, load_yaml

GOLDEN_FAILED_EXIT = 4

TYPES = ("contains", "not-contains", "regex", "similar", "chrf", "policy-clean", "terminology",
         "max-chars", "min-chars", "not-repetitive")
NEEDS_REFERENCE = ("similar", "chrf")
DEFAULT_REPETITION = 0.2


class GoldenError(ReplyloopError):
    """Invalid golden suite"""

    exit_code = 2


# -- the file format ---------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssertionSpec(_Spec):
    type: str
    value: Any = None
    threshold: float | None = None
    mode: Literal["any", "all"] | None = None
    allow_warn: bool | None = None


class CaseSpec(_Spec):
    id: str = Field(min_length=1, max_length=120)
    question: str = Field(min_length=1)
    category: str | None = None
    intent: str | None = None
    reference: str | None = None
    description: str | None = None
    assertions: list[AssertionSpec] = Field(alias="assert", min_length=1)


class SuiteSpec(_Spec):
    description: str | None = None
    cases: list[CaseSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Assertion:
    type: str
    value: Any = None                 # phrases (tuple of str), a regex, a number
    threshold: float | None = None
    mode: str = "any"
    allow_warn: bool = True
    line: int | None = None
    norms: tuple[str, ...] = ()       # contains / not-contains: the phrases as matched

    def label(self) -> str:
        if self.type in ("contains", "not-contains"):
            words = " | ".join(self.value) if self.mode == "any" else " & ".join(self.value)
            return f"{self.type} {words}"
        if self.type in ("regex", "max-chars", "min-chars"):
            return f"{self.type} {self.value}"
        if self.threshold is not None:
            return f"{self.type} >= {self.threshold:g}" if self.type in NEEDS_REFERENCE else \
                f"{self.type} <= {self.threshold:g}"
        if self.type == "policy-clean" and not self.allow_warn:
            return "policy-clean (no warn)"
        return self.type

    def to_dict(self) -> dict:
        d: dict = {"type": self.type}
        if self.value is not None:
            d["value"] = list(self.value) if isinstance(self.value, tuple) else self.value
        if self.threshold is not None:
            d["threshold"] = self.threshold
        if self.type in ("contains", "not-contains") and self.mode != "any":
            d["mode"] = self.mode
        if self.type == "policy-clean" and not self.allow_warn:
            d["allow_warn"] = False
        return d


@dataclass(frozen=True)
class Case:
    id: str
    question: str
    suite: str
    file: Path
    line: int | None
    assertions: tuple[Assertion, ...]
    category: str | None = None
    intent: str | None = None
    reference: str | None = None
    description: str | None = None

    def to_dict(self) -> dict:
        d: dict = {"id": self.id, "question": self.question}
        for key in ("category", "intent", "reference", "description"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        d["assert"] = [a.to_dict() for a in self.assertions]
        return d


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    cases: tuple[Case, ...]
    description: str | None = None


def phrase_norm(text: str) -> str:
    """A phrase as ``contains`` matches it: read like a reply, then normalised."""
    from replyloop.evaluation.readthrough import read_through
    from replyloop.evaluation.textmap import compact

    clean = read_through(text)
    return compact(clean.text if clean is not None else text)


def _check_regex(pattern: str) -> str | None:
    from replyloop.evaluation import regexcheck

    try:
        re.compile(pattern)
    except re.error as exc:
        return f"regex {pattern!r} does not compile: {exc}"
    problem = regexcheck.backtracking_problem(pattern)
    if problem:
        return f"regex {pattern!r}: {problem}"
    return None


def _assertion(spec: AssertionSpec, case: CaseSpec, where: Callable[[tuple], str], loc: tuple,
               line: int | None, errors: list[str]) -> Assertion | None:
    """Validate one assertion of the parsed spec; problems go to ``errors``."""
    def bad(message: str, key: str | None = None) -> None:
        errors.append(f"{where(loc + ((key,) if key else ()))}: case '{case.id}': {message}")

    kind = spec.type
    if kind not in TYPES:
        bad(f"unknown assertion '{kind}' (one of: {', '.join(TYPES)})", "type")
        return None
    allowed = {"contains": {"value", "mode"}, "not-contains": {"value", "mode"}, "regex": {"value"},
               "similar": {"threshold"}, "chrf": {"threshold"}, "policy-clean": {"allow_warn"},
               "terminology": set(), "max-chars": {"value"}, "min-chars": {"value"},
               "not-repetitive": {"threshold"}}[kind]
    for key in ("value", "threshold", "mode", "allow_warn"):
        if getattr(spec, key) is not None and key not in allowed:
            bad(f"'{key}' does not apply to {kind}", key)
            return None
    if kind in ("contains", "not-contains"):
        values = spec.value
        if isinstance(values, str):
            values = [values]
        if not values or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            bad(f"{kind} needs 'value': a phrase or a list of phrases", "value")
            return None
        norms = []
        for v in values:
            norm = phrase_norm(v)
            if not norm:
                bad(f"empty phrase {v!r} (nothing left after normalisation)", "value")
                return None
            norms.append(norm)
        return Assertion(kind, tuple(values), mode=spec.mode or "any", line=line, norms=tuple(norms))
    if kind == "regex":
        if not isinstance(spec.value, str) or not spec.value:
            bad("regex needs 'value': a regular expression", "value")
            return None
        problem = _check_regex(spec.value)
        if problem:
            bad(problem, "value")
            return None
        return Assertion(kind, spec.value, line=line)
    if kind in ("max-chars", "min-chars"):
        if not isinstance(spec.value, int) or isinstance(spec.value, bool) or spec.value < 0:
            bad(f"{kind} needs 'value': a number of characters (0 or more)", "value")
            return None
        return Assertion(kind, spec.value, line=line)
    if kind in NEEDS_REFERENCE:
        if not case.reference:
            bad(f"{kind} compares the draft with the reference: the case has no 'reference'")
            return None
        if kind == "chrf" and spec.threshold is None:
            bad("chrf needs 'threshold' (0..1; unrelated Chinese replies score about 0.04, paraphrases 0.3)")
            return None
    if spec.threshold is not None and not (0.0 <= spec.threshold <= 1.0) and kind != "similar":
        bad(f"'threshold' {spec.threshold} is not between 0 and 1", "threshold")
        return None
    if kind == "similar" and spec.threshold is not None and not (-1.0 <= spec.threshold <= 1.0):
        bad(f"'threshold' {spec.threshold} is not between -1 and 1", "threshold")
        return None
    threshold = spec.threshold
    if kind == "not-repetitive" and threshold is None:
        threshold = DEFAULT_REPETITION
    return Assertion(kind, None, threshold=threshold,
                     allow_warn=True if spec.allow_warn is None else spec.allow_warn, line=line)


def _case_label(doc: YamlDoc, loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        try:
            name = doc.data["cases"][loc[1]].get("id")
        except (AttributeError, IndexError, KeyError, TypeError):
            name = None
        return f"case '{name}'" if name else f"case #{loc[1] + 1}"
    return "file"


def _load_file(path: Path, seen: dict[str, str], errors: list[str]) -> Suite | None:
    try:
        doc = load_yaml(path, GoldenError, fast=True)  # libyaml: a 500-case suite in a fraction of a second
    except GoldenError as exc:
        errors.append(str(exc))
        return None
    if doc.data is None:
        return Suite(path.stem, path, ())
    if not isinstance(doc.data, dict):
        errors.append(f"{path}: expected a mapping with 'cases' at the top level")
        return None
    try:
        spec = SuiteSpec.model_validate(doc.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) >= 3 and loc[2] == "assertions":
                loc = loc[:2] + ("assert",) + loc[3:]
            key = ".".join(str(part) for part in loc)
            errors.append(f"{doc.where(loc)}: {_case_label(doc, loc)}: key '{key}': {describe_error(err)}")
        return None
    cases = []
    for i, c in enumerate(spec.cases):
        loc = ("cases", i)
        if c.id in seen:
            errors.append(f"{doc.where(loc + ('id',))}: case '{c.id}': duplicate case id (first at {seen[c.id]})")
            continue
        seen[c.id] = doc.where(loc)
        assertions = []
        for j, a in enumerate(c.assertions):
            aloc = loc + ("assert", j)
            found = _assertion(a, c, doc.where, aloc, doc.line_of(aloc), errors)
            if found is not None:
                assertions.append(found)
        cases.append(Case(id=c.id, question=c.question, suite=path.stem, file=path, line=doc.line_of(loc),
                          assertions=tuple(assertions), category=c.category, intent=c.intent,
                          reference=c.reference, description=c.description))
    return Suite(path.stem, path, tuple(cases), spec.description)


def suite_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not p.name.startswith("."))


def load_suites(directory: str | Path, names: Sequence[str] | None = None) -> list[Suite]:
    """Every suite of ``directory`` (or only ``names``); raises ``GoldenError`` listing every
    problem of every file (file:line: case 'id': message); nothing is half-loaded.

    Case ids are unique across the directory, so every file is validated even when ``names``
    picks some."""
    directory = Path(directory)
    files = suite_files(directory)
    if names:
        known = {p.stem for p in files}
        missing = [n for n in names if n not in known]
        if missing:
            have = ", ".join(sorted(known)) or "none"
            raise GoldenError(f"{directory}: no suite named {', '.join(missing)} (suites there: {have})")
    seen: dict[str, str] = {}
    errors: list[str] = []
    suites = []
    for path in files:
        suite = _load_file(path, seen, errors)
        if suite is not None:
            suites.append(suite)
    if errors:
        raise GoldenError("\n".join(errors))
    return [s for s in suites if not names or s.name in names]


def all_cases(suites: Sequence[Suite]) -> list[Case]:
    return [c for s in suites for c in s.cases]


# -- checking ----------------------------------------------------------------------------------

@dataclass
class AssertionResult:
    type: str
    label: str
    passed: bool
    detail: str = ""
    start: int | None = None      # the offending span in the draft, when there is one
    end: int | None = None
    match: str = ""
    score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaseResult:
    case_id: str
    suite: str
    question: str
    draft: str
    file: str
    line: int | None
    results: list[AssertionResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_dict(self) -> dict:
        return {"case": self.case_id, "suite": self.suite, "file": self.file, "line": self.line,
                "question": self.question, "draft": self.draft, "passed": self.passed,
                "assertions": [r.to_dict() for r in self.results]}


class _Readable:
    """A draft read like the policy engine reads it, with offsets back to the draft."""

    def __init__(self, text: str):
        from replyloop.evaluation.readthrough import read_through
        from replyloop.evaluation.textmap import TextMap

        self.text = text
        self.clean = read_through(text)
        self.map = TextMap.build(self.clean.text if self.clean is not None else text)

    def find(self, norm: str) -> tuple[int, int] | None:
        i = self.map.norm.find(norm)
        if i < 0:
            return None
        start, end = self.map.span(i, i + len(norm))
        if self.clean is not None:
            start, end = self.clean.span(start, end)
        return start, end


def _span(result: AssertionResult, draft: str, span: tuple[int, int] | None) -> AssertionResult:
    if span:
        result.start, result.end = span
        result.match = draft[span[0]:span[1]]
    return result


def _regex_span(pattern: str, draft: str) -> tuple[int, int] | None | tuple[()]:
    """The match of ``pattern`` in the draft as written, else in the draft as read (markup
    dropped, NFKC, lower-case, Traditional to Simplified; spaces kept). ``()``: matched in the
    read form where no span maps back."""
    from replyloop.evaluation.readthrough import read_through
    from replyloop.evaluation.textmap import fold

    m = re.search(pattern, draft)
    if m:
        return m.span()
    clean = read_through(draft)
    base = clean.text if clean is not None else draft
    folded = fold(base)
    m = re.search(pattern, folded)
    if not m:
        return None
    if len(folded) != len(base) or m.end() == m.start():
        return ()
    start, end = m.span()
    return clean.span(start, end) if clean is not None else (start, end)


def check_case(case: Case, draft: str, *, engine=None, similarity: float | None = None,
               policy=None) -> CaseResult:
    """Check every assertion of ``case`` on ``draft``. ``similarity``: the cosine of the draft and
    the reference (needed by ``similar``); ``engine``: the policy engine (``policy-clean``,
    ``terminology``; when None, those assertions fail: nothing could check them); ``policy``: the
    engine's ``CheckResult`` of the draft when the caller has it."""
    from replyloop.evaluation.chrf import chrf
    from replyloop.evaluation.degeneration import first_repeat, repeated_ngram_share

    readable = None
    results = []
    for a in case.assertions:
        label = a.label()
        if a.type in ("contains", "not-contains"):
            readable = readable or _Readable(draft)
            spans = [readable.find(n) for n in a.norms]
            found = [(v, s) for v, s in zip(a.value, spans) if s is not None]
            if a.type == "contains":
                ok = bool(found) if a.mode == "any" else len(found) == len(a.value)
                missing = [v for v, s in zip(a.value, spans) if s is None]
                detail = "" if ok else (Phrase(N_("none of {phrases}"), phrases=", ".join(missing)) if a.mode == "any"
                                        else Phrase(N_("missing: {phrases}"), phrases=", ".join(missing)))
                results.append(_span(AssertionResult(a.type, label, ok, detail), draft,
                                     found[0][1] if found and ok else None))
            else:
                ok = not found if a.mode == "any" else len(found) < len(a.value)
                detail = "" if ok else Phrase(N_("found: {phrases}"),
                                              phrases=", ".join(v for v, _span_found in found))
                results.append(_span(AssertionResult(a.type, label, ok, detail), draft,
                                     None if ok else found[0][1]))
        elif a.type == "regex":
            span = _regex_span(a.value, draft)
            results.append(_span(AssertionResult(a.type, label, span is not None, "" if span else Phrase(N_("no match"))),
                                 draft, span or None))
        elif a.type == "chrf":
            score = chrf(draft, case.reference or "")
            ok = score >= a.threshold
            results.append(AssertionResult(a.type, label, ok, "" if ok else Phrase(N_("chrF {score} < {threshold}"),
                                                                                  score=f"{score:.3f}", threshold=f"{a.threshold:g}"),
                                           score=round(score, 6)))
        elif a.type == "similar":
            if similarity is None:
                results.append(AssertionResult(a.type, label, False, Phrase(N_("no embedding similarity was computed"))))
                continue
            ok = similarity >= a.threshold
            results.append(AssertionResult(a.type, label, ok,
                                           "" if ok else Phrase(N_("similarity {score} < {threshold}"),
                                                                score=f"{similarity:.3f}", threshold=f"{a.threshold:g}"),
                                           score=round(float(similarity), 6)))
        elif a.type in ("policy-clean", "terminology"):
            if engine is None and policy is None:
                results.append(AssertionResult(a.type, label, False, Phrase(N_("the policy engine is not available"))))
                continue
            if policy is None:
                policy = engine.check(draft)  # once per draft, for both assertions
            res = policy
            if a.type == "policy-clean":
                bad = [v for v in res.violations if v.severity == "block" or (not a.allow_warn and v.severity == "warn")]
                detail = "; ".join(f"{v.rule} ({v.severity}): {v.match}" for v in bad)
            else:
                bad = [v for v in res.violations if v.suggestion is not None]
                detail = "; ".join(f"{v.match} → {v.suggestion}" for v in bad)
            results.append(_span(AssertionResult(a.type, label, not bad, detail), draft,
                                 (bad[0].start, bad[0].end) if bad else None))
        elif a.type == "max-chars":
            n = len(draft.strip())
            ok = n <= a.value
            offset = len(draft) - len(draft.lstrip())
            results.append(_span(AssertionResult(a.type, label, ok, "" if ok else Phrase(N_("{n} characters > {limit}"), n=n, limit=a.value)),
                                 draft, None if ok else (offset + a.value, len(draft.rstrip()))))
        elif a.type == "min-chars":
            n = len(draft.strip())
            ok = n >= a.value
            results.append(AssertionResult(a.type, label, ok, "" if ok else Phrase(N_("{n} characters < {limit}"), n=n, limit=a.value)))
        elif a.type == "not-repetitive":
            share = repeated_ngram_share(draft)
            ok = share <= a.threshold
            results.append(_span(AssertionResult(a.type, label, ok,
                                                 "" if ok else Phrase(N_("repeated 4-gram share {share} > {threshold}"),
                                                                     share=f"{share:.2f}", threshold=f"{a.threshold:g}"),
                                                 score=round(share, 6)), draft, None if ok else first_repeat(draft)))
    return CaseResult(case.id, case.suite, case.question, draft, str(case.file), case.line, results)


def check_cases(cases: Sequence[Case], drafts: Sequence[str], *, engine=None, encoder=None) -> list[CaseResult]:
    """Check every case on its draft; similarities are encoded in one batch (``encoder``)."""
    sims: dict[int, float] = {}
    need = [i for i, c in enumerate(cases) if any(a.type == "similar" for a in c.assertions)]
    if need and encoder is not None:
        import numpy as np

        d = encoder.encode([drafts[i] for i in need])
        r = encoder.encode([cases[i].reference for i in need])
        for k, i in enumerate(need):
            sims[i] = float(np.dot(d[k], r[k]))
    return [check_case(c, drafts[i], engine=engine, similarity=sims.get(i)) for i, c in enumerate(cases)]


# -- drafting with a cache ---------------------------------------------------------------------

def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()


Generate = Callable[[dict, list[str]], list[str]]   # (model row, questions) -> drafts


class Generator:
    """A ``Generate`` with the settings that change its drafts (part of the cache key)."""

    def __init__(self, fn: Generate, settings: str):
        self.fn, self.settings = fn, settings

    def __call__(self, model_row: dict, questions: list[str]) -> list[str]:
        return self.fn(model_row, questions)


def local_generator(config, *, max_new_tokens: int, batch_size: int, min_new_tokens: int = 0,
                    local=None) -> Generator:
    """Drafts with the local backend (transformers + peft), greedy and batched, as evaluation does."""
    def run(model_row: dict, questions: list[str]) -> list[str]:
        from replyloop.drafting import LocalModels, generate

        nonlocal local
        if local is None:
            local = LocalModels(device=config.file.drafting.device)
        m, tok = local.activate(model_row)
        return generate(m, tok, questions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        min_new_tokens=min_new_tokens, prompt_format=local.prompt_format)
    return Generator(run, f"{max_new_tokens}/{min(min_new_tokens, max_new_tokens)}")


def cached_drafts(store, model_row: dict, questions: Sequence[str], generate: Generate, *,
                  settings: str) -> tuple[list[str], int]:
    """Drafts for ``questions`` by ``model_row``: from ``golden_drafts`` where cached under
    ``settings`` (the generation settings), the rest generated in one batched call and cached.
    Returns (drafts, how many were generated)."""
    hashes = [question_hash(q) for q in questions]
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(hashes))
    for start in range(0, len(unique), 500):
        chunk = unique[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for h, draft in store.db.execute(
                f"SELECT question_hash, draft FROM golden_drafts WHERE model_id = ? AND settings = ?"
                f" AND question_hash IN ({marks})", [model_row["id"], settings, *chunk]).fetchall():
            found[h] = draft
    missing: dict[str, str] = {}
    for h, q in zip(hashes, questions):
        if h not in found and h not in missing:
            missing[h] = q
    if missing:
        new = generate(model_row, list(missing.values()))
        from replyloop import timeutil

        now = timeutil.now_iso()
        with store.transaction() as db:
            db.conn.executemany(
                "INSERT OR REPLACE INTO golden_drafts (model_id, settings, question_hash, question, draft,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(model_row["id"], settings, h, q, d, now) for (h, q), d in zip(missing.items(), new)])
        found.update(zip(missing.keys(), new))
    return [found[h] for h in hashes], len(missing)


# -- a run -------------------------------------------------------------------------------------

@dataclass
class SuiteRun:
    model_id: int
    model_name: str
    suites: list[str]
    cases: list[CaseResult]
    generated: int = 0                 # drafts generated (not from the cache)
    timings: dict = field(default_factory=dict)
    id: int | None = None
    evaluation_id: int | None = None
    created_at: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def to_dict(self) -> dict:
        return {"id": self.id, "evaluation_id": self.evaluation_id, "created_at": self.created_at,
                "model": {"id": self.model_id, "name": self.model_name}, "suites": self.suites,
                "n": len(self.cases), "failed": len(self.failed), "passed": self.passed,
                "generated": self.generated, "timings": self.timings,
                "cases": [c.to_dict() for c in self.cases]}


def run_suites(config, store, model_row: dict, suites: Sequence[Suite], *, generate: Generate | None = None,
               engine=None, encoder=None, max_new_tokens: int | None = None, batch_size: int | None = None,
               save: bool = True) -> SuiteRun:
    """Draft (cached) and check every case of ``suites`` with ``model_row``; stored unless ``save`` is False."""
    from replyloop import timeutil

    opts = config.file.evaluation
    max_new = max_new_tokens or opts.max_new_tokens
    generate = generate or local_generator(config, max_new_tokens=max_new, batch_size=batch_size or opts.batch_size)
    cases = all_cases(suites)
    t0 = time.perf_counter()
    settings = getattr(generate, "settings", str(max_new))
    drafts, generated = cached_drafts(store, model_row, [c.question for c in cases], generate, settings=settings)
    t1 = time.perf_counter()
    if engine is None:
        from replyloop.drafting import load_policy_engine

        engine = load_policy_engine(config)
    if encoder is None and any(a.type == "similar" for c in cases for a in c.assertions):
        from replyloop.evaluation.embeddings import Encoder

        encoder = Encoder.from_config(config, store)
    results = check_cases(cases, drafts, engine=engine, encoder=encoder)
    t2 = time.perf_counter()
    run = SuiteRun(model_row["id"], model_row["name"], [s.name for s in suites], results, generated,
                   {"draft_s": round(t1 - t0, 4), "check_s": round(t2 - t1, 4)}, created_at=timeutil.now_iso())
    if save:
        save_run(store, run)
    return run


def save_run(store, run: SuiteRun, evaluation_id: int | None = None) -> None:
    run.evaluation_id = evaluation_id
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO golden_runs (model_id, evaluation_id, suites, n, failed, passed, results, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run.model_id, evaluation_id, json.dumps(run.suites, ensure_ascii=False), len(run.cases),
             len(run.failed), int(run.passed), "[]", run.created_at))
        run.id = cur.lastrowid
        db.execute("UPDATE golden_runs SET results = ? WHERE id = ?",
                   (json.dumps(run.to_dict(), ensure_ascii=False), run.id))
        db.conn.executemany(
            "INSERT INTO golden_case_results (run_id, case_id, suite, passed, failures) VALUES (?, ?, ?, ?, ?)",
            [(run.id, c.case_id, c.suite, int(c.passed),
              json.dumps([r.label for r in c.results if not r.passed], ensure_ascii=False)) for c in run.cases])


def link_evaluation(store, run: SuiteRun, evaluation_id: int) -> None:
    """Attach a stored run to the evaluation whose gate it was part of."""
    run.evaluation_id = evaluation_id
    with store.transaction() as db:
        db.execute("UPDATE golden_runs SET evaluation_id = ?, results = ? WHERE id = ?",
                   (evaluation_id, json.dumps(run.to_dict(), ensure_ascii=False), run.id))


# -- champion vs challenger --------------------------------------------------------------------

def compare(challenger: SuiteRun, champion: SuiteRun | None) -> dict:
    """Per case: ``newly broken`` (the champion passed it, the challenger fails), ``fixed``
    (the champion failed it, the challenger passes), ``still failing``, ``failing`` (no
    champion result for it: a new case or no champion), ``passing``."""
    before = {c.case_id: c.passed for c in champion.cases} if champion is not None else {}
    out: dict[str, list[str]] = {"newly broken": [], "fixed": [], "still failing": [], "failing": [], "passing": []}
    for c in challenger.cases:
        was = before.get(c.case_id)
        if c.passed:
            out["fixed" if was is False else "passing"].append(c.case_id)
        elif was is True:
            out["newly broken"].append(c.case_id)
        elif was is False:
            out["still failing"].append(c.case_id)
        else:
            out["failing"].append(c.case_id)
    return out


def case_history(store, case_id: str, limit: int = 20) -> list[dict]:
    """The latest stored runs of one case, newest first: run, model, evaluation, passed, the
    failed assertions (``golden_case_results``)."""
    rows = store.query(
        "SELECT r.run_id, g.model_id, m.name AS model_name, g.evaluation_id, g.created_at, r.passed, r.failures"
        " FROM golden_case_results r JOIN golden_runs g ON g.id = r.run_id JOIN models m ON m.id = g.model_id"
        " WHERE r.case_id = ? ORDER BY r.run_id DESC LIMIT ?", (case_id, limit))
    for row in rows:
        row["passed"] = bool(row["passed"])
        row["failures"] = json.loads(row["failures"] or "[]")
    return rows


def describe_changes(changes: dict) -> str:
    """``newly broken: a, b; fixed: c``: a Phrase (English as a str, stored in the gate's detail)."""
    parts = [Phrase(N_("{change}: {cases}"), change=Phrase(_CHANGE_IDS.get(k, k)), cases=", ".join(v))
             for k, v in changes.items() if v and k != "passing"]
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text = text + "; " + part
    return text


_CHANGE_IDS = {"newly broken": N_("newly broken"), "fixed": N_("fixed"),
               "still failing": N_("still failing"), "failing": N_("failing")}


def _change_word(kind: str) -> str:
    msgid = _CHANGE_IDS.get(kind)
    return _(msgid) if msgid else kind


GATE_NAME = "golden suite failures"


def gate_check(config, store, model_row: dict, champion_row: dict | None, *, generate: Generate | None = None,
               engine=None, encoder=None, max_new_tokens: int | None = None,
               batch_size: int | None = None):
    """The golden criterion of the gate, per ``evaluation.golden_gate``:

    - ``off`` or no suite file: None (nothing measured);
    - ``report``: the failures are shown but not counted;
    - ``block``: any failing case blocks promotion;
    - ``regressions``: only cases the champion passed ("newly broken") block.

    Returns ``(Criterion | None, challenger run | None, comparison dict)``. A malformed suite
    directory fails the criterion closed (its error is the detail)."""
    from replyloop.evaluation.gate import Criterion

    mode = config.file.evaluation.golden_gate
    directory = golden_dir(config)
    if mode == "off" or not suite_files(directory):
        return None, None, {}
    counted = mode != "report"
    try:
        suites = load_suites(directory)
    except GoldenError as exc:
        return Criterion(GATE_NAME, None, 0, False, Phrase(N_("the golden suites do not load: {error}"), error=str(exc)),
                         counted), None, {}
    kwargs = dict(generate=generate, engine=engine, encoder=encoder, max_new_tokens=max_new_tokens,
                  batch_size=batch_size)
    run = run_suites(config, store, model_row, suites, **kwargs)
    champ = run_suites(config, store, champion_row, suites, save=False, **kwargs) if champion_row else None
    changes = compare(run, champ)
    blocking = changes["newly broken"] if mode == "regressions" else [c.case_id for c in run.failed]
    detail = Phrase(N_("{count} cases"), count=len(run.cases))
    if run.failed:
        detail += "; " + describe_changes(changes)
    if changes["fixed"] and not run.failed:
        detail += Phrase(N_("; fixed: {cases}"), cases=", ".join(changes["fixed"]))
    limit_note = Phrase(N_(" (only newly broken cases count)")) if mode == "regressions" else ""
    criterion = Criterion(GATE_NAME, len(blocking), 0, not blocking, detail + limit_note, counted)
    return criterion, run, changes


def golden_dir(config) -> Path:
    return config.resolve(config.file.evaluation.golden_dir)


# -- rendering ---------------------------------------------------------------------------------

def highlight(draft: str, start: int | None, end: int | None, width: int = 24) -> str:
    """The draft around ``[start, end)`` with the span marked ``[[…]]`` (the whole draft, shortened,
    when there is no span)."""
    text = draft.replace("\n", " ")
    if start is None or end is None:
        return text if len(text) <= 2 * width + 10 else text[:2 * width + 8] + "…"
    before = text[max(0, start - width):start]
    after = text[end:end + width]
    return ("…" if start > width else "") + before + "[[" + text[start:end] + "]]" + after + \
        ("…" if end + width < len(text) else "")


def render_table(run: SuiteRun, changes: dict | None = None) -> str:
    """One row per assertion: case, assertion, PASS/FAIL, detail and the offending span in [[…]]."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, box=None, pad_edge=False)
    for col in (pgettext("golden table", "case"), pgettext("golden table", "assertion"),
                pgettext("golden table", "result"), pgettext("golden table", "detail / draft")):
        table.add_column(col, overflow="fold")
    status = {}
    for kind, ids in (changes or {}).items():
        for i in ids:
            status[i] = kind
    for c in run.cases:
        first = True
        for r in c.results:
            name = c.case_id if first else ""
            if first and c.case_id in status and status[c.case_id] not in ("passing", "failing"):
                name += " (" + _change_word(status[c.case_id]) + ")"
            shown = highlight(c.draft, r.start, r.end) if (not r.passed or r.start is not None) else ""
            detail = " — ".join(x for x in (localized(r.detail), shown) if x)
            table.add_row(name, r.label, _("PASS") if r.passed else _("FAIL"), detail)
            first = False
    console = Console(width=160, record=True, force_terminal=False, color_system=None)
    with console.capture() as cap:
        console.print(table)
    failed = run.failed
    cached = len(run.cases) - run.generated if run.generated <= len(run.cases) else 0
    tail = (_("Golden suites ({suites}) for {model}: {passed} of {total} cases passed").format(
                suites=", ".join(run.suites), model=run.model_name, passed=len(run.cases) - len(failed),
                total=len(run.cases))
            + (_("; failed: {cases}").format(cases=", ".join(c.case_id for c in failed)) if failed else "")
            + _(" ({drafted} drafted, {cached} from the cache)").format(drafted=run.generated, cached=cached))
    table_text = "\n".join(line.rstrip() for line in cap.get().rstrip().splitlines())
    return table_text + "\n" + tail


# -- writing a case (Slack) --------------------------------------------------------------------

_write_lock = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    lock_path = path.with_name(f".{path.name}.lock")
    with _write_lock, open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _case_yaml(case: dict) -> str:
    import yaml

    text = yaml.safe_dump([case], allow_unicode=True, sort_keys=False, width=1000)
    return "".join("  " + line if line.strip() else line for line in text.splitlines(keepends=True))


def add_case(directory: str | Path, suite: str, case: dict) -> Case:
    """Append ``case`` (a dict in the file format) to ``directory/<suite>.yaml`` and return it as
    loaded. The new file is validated with every other suite (ids unique, assertions valid)
    before it replaces the old one atomically (temp file, fsync, rename); on any problem the
    file is unchanged and ``GoldenError`` says why. Comments and layout of the file are kept
    when the case can be appended as text."""
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", suite or ""):
        raise GoldenError(f"suite name {suite!r}: use 1-64 of A-Z a-z 0-9 . _ - (it names the file {suite}.yaml)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [p for p in suite_files(directory) if p.stem == suite]
    path = existing[0] if existing else directory / f"{suite}.yaml"
    with _file_lock(path):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        candidates = []
        if not old.strip():
            candidates.append("cases:\n" + _case_yaml(case))
        else:
            data = yaml.safe_load(old)
            if isinstance(data, dict) and list(data)[-1:] == ["cases"] and data.get("cases"):
                candidates.append(old.rstrip("\n") + "\n" + _case_yaml(case))
            if isinstance(data, dict):
                data = dict(data)
                data["cases"] = list(data.get("cases") or []) + [case]
                candidates.append(yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000))
        if not candidates:
            raise GoldenError(f"{path}: expected a mapping with 'cases' at the top level")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        last_error = None
        try:
            for text in candidates:
                tmp.write_text(text, encoding="utf-8")
                try:
                    loaded = _validate_replacement(directory, path, tmp)
                except GoldenError as exc:
                    last_error = exc
                    continue
                new = next((c for c in loaded if c.id == case.get("id")), None)
                if new is None or new.question != case.get("question") or new.reference != case.get("reference"):
                    last_error = GoldenError(f"{path}: the new case was not read back as written")
                    continue  # the appended text did not read back: rewrite the whole file instead
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                _fsync_dir(directory)
                return new
        finally:
            tmp.unlink(missing_ok=True)
        raise GoldenError(str(last_error).replace(str(tmp), str(path)))


def _validate_replacement(directory: Path, path: Path, tmp: Path) -> list[Case]:
    seen: dict[str, str] = {}
    errors: list[str] = []
    others = [p for p in suite_files(directory) if p != path]
    for p in others:
        _load_file(p, seen, errors)
    errors.clear()  # problems of other files are theirs; only the ids they hold matter here
    suite = _load_file(tmp, seen, errors)
    if errors or suite is None:
        raise GoldenError("\n".join(errors) or f"{path}: invalid")
    return [Case(**{**asdict_case(c), "file": path, "suite": path.stem}) for c in suite.cases]


def asdict_case(case: Case) -> dict:
    return {f: getattr(case, f) for f in Case.__dataclass_fields__}


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def suggest_assertions(draft: str, final: str, *, max_phrases: int = 3) -> list[dict]:
    """Assertions suggested from a supervisor's edit: ``not-contains`` for what was deleted or
    replaced (at least 2 normalised characters), ``chrf`` against the approved text, and
    ``policy-clean``."""
    import difflib

    deleted = []
    matcher = difflib.SequenceMatcher(a=draft, b=final, autojunk=False)
    for op, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if op in ("delete", "replace"):
            piece = draft[i1:i2].strip(" ，。！？,.!?\n")
            if len(phrase_norm(piece)) >= 2 and not phrase_norm(piece) in phrase_norm(final):
                deleted.append(piece)
    out = []
    if deleted:
        out.append({"type": "not-contains", "value": list(dict.fromkeys(deleted))[:max_phrases]})
    out.append({"type": "chrf", "threshold": 0.3})
    out.append({"type": "policy-clean"})
    return out


# -- the weekly report -------------------------------------------------------------------------

def weekly_golden(store, lo: str, hi: str) -> list[dict]:
    """The golden runs of the gate (linked to an evaluation) created in ``[lo, hi)``: model,
    evaluation, cases, failing cases and their change against the champion."""
    out = []
    for row in store.query(
            "SELECT g.id, g.model_id, g.evaluation_id, g.n, g.failed, g.results, g.created_at, m.name AS model_name"
            " FROM golden_runs g JOIN models m ON m.id = g.model_id"
            " WHERE g.evaluation_id IS NOT NULL AND g.created_at >= ? AND g.created_at < ? ORDER BY g.id", (lo, hi)):
        try:
            report = json.loads(store.scalar("SELECT report FROM evaluations WHERE id = ?", (row["evaluation_id"],))
                                or "{}").get("golden") or {}
        except ValueError:
            report = {}
        changes = report.get("changes") or {}
        results = json.loads(row["results"] or "{}")
        out.append({"run_id": row["id"], "model_id": row["model_id"], "model_name": row["model_name"],
                    "evaluation_id": row["evaluation_id"], "created_at": row["created_at"], "n": row["n"],
                    "failed": [c["case"] for c in results.get("cases", []) if not c.get("passed")],
                    "newly_broken": changes.get("newly broken", []), "fixed": changes.get("fixed", [])})
    return out


def weekly_markdown(runs: list[dict]) -> list[str]:
    """The report's "Golden suites" section (nothing when no gate ran a suite this week)."""
    if not runs:
        return []
    from replyloop.i18n import _  # issue 22: the weekly report's language

    header = [_("evaluation"), _("model"), _("cases"), _("failed"), _("failing cases"), _("newly broken"), _("fixed")]
    lines = ["## " + _("Golden suites"), "", _("Must-pass cases (`evals/*.yaml`) checked by the gate this week:"), "",
             "| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: | --- | --- | --- |"]
    for r in runs:
        cells = [f"#{r['evaluation_id']}", f"{r['model_name']} (#{r['model_id']})", r["n"], len(r["failed"]),
                 ", ".join(r["failed"]) or "–", ", ".join(r["newly_broken"]) or "–", ", ".join(r["fixed"]) or "–"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines + [""]
