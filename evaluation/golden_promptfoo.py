"""Golden suites to and from promptfoo (https://promptfoo.dev) configs.

Export (``replyloop eval --suite --export promptfoo``): one promptfoo ``tests`` entry per case,
``vars: {question, reference}``, the prompt ``{{question}}``. Assertions promptfoo has natively
are written as its own types (``contains`` / ``contains-any`` / ``contains-all``,
``not-contains`` / ``not-contains-any`` / ``not-contains-all``, ``regex``, ``similar`` with the
reference as value); the ones it lacks (``chrf``, ``policy-clean``, ``terminology``,
``not-repetitive``, ``max-chars``, ``min-chars``) are written as ``python`` assertions that call
``evaluation.golden_promptfoo.check`` with the replyloop assertion, so promptfoo run in this
project's environment checks them as replyloop does. Caveat: promptfoo's own ``contains``
matches literally (no Traditional / full-width / spacing normalisation).

Import: a promptfoo YAML's ``tests`` (and ``defaultTest.assert``) with those assertion types, plus
``icontains*`` (replyloop's matching ignores case anyway) and the ``python`` assertions this
export writes. Anything else is a ``GoldenError`` naming the file, line and assertion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from replyloop.evaluation.golden import GoldenError, Suite, check_case
from replyloop.yamlfile import load_yaml

_NATIVE_PLAIN = {"contains": "contains", "not-contains": "not-contains"}
PYTHON_PREFIX = "__import__('evaluation.golden_promptfoo', fromlist=['check']).check(output, "


def _assertion_to_promptfoo(a: dict, reference: str | None) -> dict:
    kind = a["type"]
    if kind in ("contains", "not-contains"):
        values = a["value"]
        mode = a.get("mode", "any")
        if len(values) == 1:
            return {"type": kind, "value": values[0]}
        return {"type": f"{kind}-{mode}", "value": list(values)}
    if kind == "regex":
        return {"type": "regex", "value": a["value"]}
    if kind == "similar":
        out = {"type": "similar", "value": reference}
        if a.get("threshold") is not None:
            out["threshold"] = a["threshold"]
        return out
    spec = json.dumps(a, ensure_ascii=False, sort_keys=True)
    ref = json.dumps(reference or "", ensure_ascii=False)
    return {"type": "python", "value": f"{PYTHON_PREFIX}{spec}, {ref})", "metric": kind}


def to_promptfoo(suites: list[Suite], *, provider: str = "openai:chat:champion") -> dict:
    """A promptfoo config (a dict to dump as YAML) equivalent to ``suites``."""
    tests = []
    for s in suites:
        for c in s.cases:
            vars_ = {"question": c.question}
            if c.reference:
                vars_["reference"] = c.reference
            meta = {"suite": s.name, "case": c.id}
            for key in ("category", "intent"):
                if getattr(c, key):
                    meta[key] = getattr(c, key)
            tests.append({"description": c.id, "vars": vars_,
                          "assert": [_assertion_to_promptfoo(a.to_dict(), c.reference) for a in c.assertions],
                          "metadata": meta})
    return {"description": "replyloop golden suites: " + ", ".join(s.name for s in suites),
            "prompts": ["{{question}}"], "providers": [provider], "tests": tests}


def check(output: str, assertion: dict, reference: str = "") -> dict:
    """A promptfoo ``python`` assertion: one replyloop assertion on ``output`` (GradingResult dict)."""
    import tempfile

    from replyloop.evaluation import golden

    case = {"id": "promptfoo", "question": "-", "assert": [assertion]}
    if reference:
        case["reference"] = reference
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.yaml"
        import yaml

        path.write_text(yaml.safe_dump({"cases": [case]}, allow_unicode=True), encoding="utf-8")
        [suite] = golden.load_suites(tmp)
    engine = None
    if assertion.get("type") in ("policy-clean", "terminology"):
        from replyloop.evaluation.policy import load_policies
        from replyloop.config import load_config
        from replyloop.errors import ConfigError

        try:  # the workspace's policies ($REPLYLOOP_HOME), else the shipped ones
            directory = load_config().policies_dir
        except ConfigError:
            directory = None
        engine = load_policies(directory)
    [result] = check_case(suite.cases[0], output, engine=engine).results
    return {"pass": result.passed, "score": 1.0 if result.passed else 0.0,
            "reason": result.detail or result.label}


# -- import ------------------------------------------------------------------------------------

_IMPORT_TYPES = {
    "contains": ("contains", "any"), "icontains": ("contains", "any"),
    "contains-any": ("contains", "any"), "icontains-any": ("contains", "any"),
    "contains-all": ("contains", "all"), "icontains-all": ("contains", "all"),
    "not-contains": ("not-contains", "any"), "not-icontains": ("not-contains", "any"),
    "not-contains-any": ("not-contains", "any"), "not-icontains-any": ("not-contains", "any"),
    "not-contains-all": ("not-contains", "all"), "not-icontains-all": ("not-contains", "all"),
}
_QUESTION_VARS = ("question", "query", "input", "prompt", "message")
_PY = re.compile(r"^" + re.escape(PYTHON_PREFIX) + r"(\{.*\}), (\".*\")\)$", re.S)


def _slug(text: str, fallback: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text or "").strip("-.")[:64]
    return slug or fallback


def from_promptfoo(path: str | Path) -> list[dict]:
    """The cases (dicts in the suite file format) of a promptfoo YAML; ``GoldenError`` naming
    file, line and assertion for anything replyloop cannot check the same way."""
    doc = load_yaml(path, GoldenError, fast=True)
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise GoldenError(f"{doc.path}: expected a promptfoo config with a 'tests' list")
    errors: list[str] = []
    default = (data.get("defaultTest") or {}).get("assert") or [] if isinstance(data.get("defaultTest"), dict) else []
    cases = []
    seen: set[str] = set()
    for i, test in enumerate(data["tests"]):
        loc = ("tests", i)
        if not isinstance(test, dict):
            errors.append(f"{doc.where(loc)}: test #{i + 1}: expected a mapping")
            continue
        vars_ = test.get("vars") or {}
        if not isinstance(vars_, dict):
            errors.append(f"{doc.where(loc + ('vars',))}: test #{i + 1}: 'vars' must be a mapping")
            continue
        qvar = next((v for v in _QUESTION_VARS if isinstance(vars_.get(v), str)), None)
        if qvar is None and len(vars_) == 1 and isinstance(next(iter(vars_.values())), str):
            qvar = next(iter(vars_))
        name = _slug(str(test.get("description") or ""), f"case-{i + 1}")
        if name in seen:
            name = f"{name}-{i + 1}"
        seen.add(name)
        if qvar is None:
            errors.append(f"{doc.where(loc)}: test '{name}': no question variable (one of"
                          f" {', '.join(_QUESTION_VARS)}, or a single string variable)")
            continue
        reference = vars_.get("reference") if isinstance(vars_.get("reference"), str) else None
        asserts = []
        items = [(("defaultTest", "assert", j), a) for j, a in enumerate(default)] + \
                [(loc + ("assert", j), a) for j, a in enumerate(test.get("assert") or [])]
        for aloc, a in items:
            where = f"{doc.where(aloc)}: test '{name}'"
            kind = a.get("type") if isinstance(a, dict) else None
            if kind in _IMPORT_TYPES:
                mapped, mode = _IMPORT_TYPES[kind]
                value = a.get("value")
                values = [value] if isinstance(value, str) else value
                if not isinstance(values, list) or not values:
                    errors.append(f"{where}: assertion '{kind}' needs a string or list value")
                    continue
                out = {"type": mapped, "value": values}
                if mode == "all":
                    out["mode"] = "all"
                asserts.append(out)
            elif kind == "regex":
                asserts.append({"type": "regex", "value": a.get("value")})
            elif kind == "similar":
                ref = a.get("value")
                if isinstance(ref, list):
                    ref = ref[0] if ref else None
                if not isinstance(ref, str):
                    errors.append(f"{where}: assertion 'similar' needs the expected text as value")
                    continue
                if "{{" in ref and reference:
                    ref = reference
                reference = reference or ref
                out = {"type": "similar"}
                if a.get("threshold") is not None:
                    out["threshold"] = a["threshold"]
                asserts.append(out)
            elif kind == "python" and isinstance(a.get("value"), str) and (m := _PY.match(a["value"].strip())):
                spec = json.loads(m.group(1))
                ref = json.loads(m.group(2))
                reference = reference or ref or None
                asserts.append(spec)
            else:
                errors.append(f"{where}: unsupported assertion {kind!r} (supported: "
                              f"{', '.join(sorted(_IMPORT_TYPES))}, regex, similar, and the python checks"
                              " that replyloop's export writes)")
        case = {"id": name, "question": vars_[qvar]}
        meta = test.get("metadata") if isinstance(test.get("metadata"), dict) else {}
        for key in ("category", "intent"):
            if isinstance(meta.get(key), str):
                case[key] = meta[key]
        if reference:
            case["reference"] = reference
        case["assert"] = asserts
        cases.append(case)
    if errors:
        raise GoldenError("\n".join(errors))
    return cases


def import_promptfoo(path: str | Path, directory: str | Path, suite: str) -> Path:
    """Write the cases of a promptfoo YAML as ``directory/<suite>.yaml`` (a new file, validated
    with the other suites first; an existing suite file is refused)."""
    import os

    import yaml

    from replyloop.evaluation.golden import _validate_replacement, suite_files

    cases = from_promptfoo(path)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{suite}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", suite):
        raise GoldenError(f"suite name {suite!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    if any(p.stem == suite for p in suite_files(directory)):
        raise GoldenError(f"{target}: a suite named {suite} exists already (choose another --suite name)")
    text = f"# imported from {Path(path).name} (promptfoo)\n" + yaml.safe_dump(
        {"cases": cases}, allow_unicode=True, sort_keys=False, width=1000)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            _validate_replacement(directory, target, tmp)
        except GoldenError as exc:
            raise GoldenError(str(exc).replace(str(tmp), str(target))) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
