"""The model registry: trained adapters, their status, promotion, canary and rollback.

Statuses: ``candidate`` (registered, not serving), ``canary`` (drafts a share of new
conversations), ``champion`` (drafts the rest), ``retired`` (a former champion, kept on disk
for rollback), ``rejected`` (failed or rolled-back challenger). Every transition is one
transaction together with its ``audit_log`` row (``model.register``, ``model.canary``,
``model.promote``, ``model.rollback``, ``model.reject``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from replyloop import timeutil
from replyloop.errors import ConflictError, GateFailed, NotFoundError, ReplyloopError
from replyloop.store import Store
from replyloop.textnorm import sha256

STATUSES = ("candidate", "canary", "champion", "retired", "rejected")
MANIFEST = "manifest.json"
REGISTERED_MARKER = ".replyloop-registered"  # written into an adapter dir by register(): it is immutable


class RegistryError(ReplyloopError):
    """The registry refused this change"""


class ModelNameError(RegistryError):
    """Invalid model name"""

    exit_code = 2


MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = (f"1-{MAX_NAME} characters: letters A-Z a-z, digits, '.', '_', '-', starting with a letter or digit,"
             " and not only digits (an all-digit name would be read as a model id)")


def check_model_name(name: str) -> str:
    """``name`` if it is a safe model name (``NAME_RULE``), else ModelNameError saying why."""
    if not isinstance(name, str) or not name:
        raise ModelNameError(f"model name is empty: use {NAME_RULE}")
    if name.isdigit():
        raise ModelNameError(f"model name {name!r} is only digits: `models show {name}` would find model id "
                             f"{name}; use {NAME_RULE}")
    if len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
        raise ModelNameError(f"model name {name!r} is not allowed: use {NAME_RULE}")
    return name


def default_model_name(directory: str) -> str:
    """A safe name from an adapter directory's name (``check_model_name`` holds for it)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", directory).strip("-._")[:MAX_NAME].rstrip("-._")
    if not name or name.isdigit():
        name = f"model-{name}" if name else "model"
    return name[:MAX_NAME]


def canary_bucket(conversation_id: str) -> float:
    """A stable number in [0, 100) from the conversation id: the same conversation always
    lands in the same bucket, so it keeps talking to the same model."""
    return int(sha256("canary\x1f" + str(conversation_id))[:15], 16) / 16**15 * 100


def read_manifest(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{path}: no manifest.json (is {adapter_dir} a trained adapter directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(manifest, dict) or not manifest.get("base_model"):
        raise RegistryError(f"{path}: field base_model is missing")
    return manifest


def registered_marker(adapter_dir: str | Path) -> dict | None:
    """The marker ``register`` left in ``adapter_dir`` (model id, name, database), or None."""
    path = Path(adapter_dir) / REGISTERED_MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    return data if isinstance(data, dict) else {}


def registered_refusal(adapter_dir: str | Path) -> str | None:
    """Why ``adapter_dir`` must not be replaced (it holds a registered model), or None."""
    marker = registered_marker(adapter_dir)
    if marker is None:
        return None
    return (f"{adapter_dir} holds the registered model {marker.get('name') or '?'!r} (id {marker.get('model_id')}, "
            f"registry {marker.get('db_path')}); registered adapters are never replaced")


class Registry:
    def __init__(self, store: Store, keep_adapters: int = 5):
        self.store = store
        self.keep_adapters = keep_adapters

    # -- reading -------------------------------------------------------------------------

    def _row(self, row: dict | None) -> dict | None:
        if row is not None:
            row = dict(row)
            row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else {}
        return row

    def get(self, model: int | str) -> dict:
        """A model by id, name or adapter path."""
        if isinstance(model, int) or (isinstance(model, str) and model.isdigit()):
            row = self.store.one("SELECT * FROM models WHERE id = ?", (int(model),))
        else:
            row = self.store.one("SELECT * FROM models WHERE name = ?", (model,))
            if row is None and Path(model).exists():
                row = self.store.one("SELECT * FROM models WHERE adapter_path = ? ORDER BY id DESC LIMIT 1",
                                     (str(Path(model).resolve()),))
        if row is None:
            raise NotFoundError(f"model {model} not found (see `replyloop models list`)")
        return self._row(row)

    def _by_status(self, status: str) -> dict | None:
        return self._row(self.store.one("SELECT * FROM models WHERE status = ? ORDER BY id DESC LIMIT 1",
                                        (status,)))

    def champion(self) -> dict | None:
        return self._by_status("champion")

    def canary(self) -> dict | None:
        return self._by_status("canary")

    def with_status(self, status: str) -> dict | None:
        """The champion or canary with its latest evaluation (``evaluation``), for status views."""
        row = self._by_status(status)
        if row is not None:
            row["evaluation"] = self.latest_evaluation(row["id"])
        return row

    def list(self, status: str | None = None) -> list[dict]:
        if status:
            rows = self.store.query("SELECT * FROM models WHERE status = ? ORDER BY id", (status,))
        else:
            rows = self.store.query("SELECT * FROM models ORDER BY id")
        return [self._row(r) for r in rows]

    def latest_evaluation(self, model_id: int) -> dict | None:
        return self.store.one(
            "SELECT id, gate_passed, mean_similarity, share_above, n, against_model_id, created_at FROM evaluations"
            " WHERE model_id = ? ORDER BY created_at DESC, id DESC LIMIT 1", (model_id,))

    # -- registering -----------------------------------------------------------------------

    def register(self, adapter_dir: str | Path, run_id: int | None = None, name: str | None = None,
                 actor: str = "cli") -> dict:
        """Add a trained adapter (reads its manifest.json) as a candidate; registering the same
        directory again returns the existing row. Writes ``.replyloop-registered`` into the
        directory: training refuses to replace it (registered adapters are immutable)."""
        if name is not None:
            check_model_name(name)
        path = Path(adapter_dir).resolve()
        manifest = read_manifest(path)
        with self.store.transaction() as db:
            existing = self.store.one("SELECT id, name FROM models WHERE adapter_path = ?"
                                      " AND adapter_deleted_at IS NULL", (str(path),))
            if existing is not None:
                self._write_marker(path, existing["id"], existing["name"])
                return self.get(existing["id"])
            if name is None:
                name = stem = default_model_name(path.name)
                n = 2
                while self.store.one("SELECT 1 FROM models WHERE name = ?", (name,)):
                    name = f"{stem[:MAX_NAME - 1 - len(str(n))]}-{n}"
                    n += 1
            elif self.store.one("SELECT 1 FROM models WHERE name = ?", (name,)):
                raise ConflictError(f"a model named {name!r} already exists")
            cur = db.execute(
                "INSERT INTO models (name, adapter_path, base_model, snapshot_hash, run_id, metrics, status,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?)",
                (name, str(path), str(manifest["base_model"]), manifest.get("snapshot_hash"), run_id,
                 json.dumps(manifest.get("metrics") or {}, ensure_ascii=False), timeutil.now_iso()),
            )
            model_id = cur.lastrowid
            self.store.audit(actor, "model.register", "model", model_id,
                             {"name": name, "adapter_path": str(path), "run_id": run_id, "to": "candidate",
                              "snapshot_hash": manifest.get("snapshot_hash")})
            self._write_marker(path, model_id, name)  # fails -> the row is rolled back
        return self.get(model_id)

    def _write_marker(self, path: Path, model_id: int, name: str) -> None:
        current = registered_marker(path)
        if current and current.get("model_id") == model_id:
            return
        body = {"model_id": model_id, "name": name, "db_path": str(Path(self.store.path).resolve()),
                "registered_at": timeutil.now_iso()}
        tmp = path / (REGISTERED_MARKER + ".tmp")
        try:
            tmp.write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            tmp.replace(path / REGISTERED_MARKER)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RegistryError(f"{path}: cannot write {REGISTERED_MARKER} (registered adapters are marked"
                                f" immutable): {exc.strerror or exc}") from None

    # -- transitions ---------------------------------------------------------------------

    def _set(self, db, model_id: int, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE models SET {cols} WHERE id = ?", (*fields.values(), model_id))

    def _check_gate(self, model: dict, force: bool, what: str) -> dict | None:
        evaluation = self.latest_evaluation(model["id"])
        if force:
            return evaluation
        if evaluation is None:
            raise GateFailed(f"model {model['name']} has no evaluation: run `replyloop eval {model['name']}`"
                             f" first (or {what} with --force)")
        if not evaluation["gate_passed"]:
            raise GateFailed(f"model {model['name']} failed the promotion gate in evaluation"
                             f" {evaluation['id']}: see `replyloop models show {model['name']}`"
                             f" (or {what} with --force)")
        return evaluation

    def promote(self, model_id: int | str, actor: str, force: bool = False, reason: str = "") -> dict:
        """Make a candidate or canary the champion; the old champion is retired (kept for rollback).

        Refuses (GateFailed) when the model's latest evaluation failed the gate or it has none,
        unless ``force``.
        """
        with self.store.transaction() as db:
            model = self.get(model_id)
            if model["status"] not in ("candidate", "canary"):
                raise RegistryError(f"model {model['name']} is {model['status']}: only a candidate or the"
                                    " canary can be promoted")
            evaluation = self._check_gate(model, force, "promote")
            now = timeutil.now_iso()
            old = self.champion()
            if old is not None:
                self._set(db, old["id"], status="retired", retired_at=now)
            self._set(db, model["id"], status="champion", promoted_by=actor, promoted_at=now,
                      canary_percent=None, retired_at=None)
            self.store.audit(actor, "model.promote", "model", model["id"], {
                "reason": reason, "from": model["status"], "to": "champion", "forced": force,
                "evaluation_id": evaluation and evaluation["id"],
                "gate_passed": None if evaluation is None else bool(evaluation["gate_passed"]),
                "previous_champion": old and old["id"],
            })
        self.prune_adapters(actor)
        return self.get(model["id"])

    def start_canary(self, model_id: int | str, percent: int, actor: str, force: bool = False,
                     reason: str = "") -> dict:
        """Let a candidate draft ``percent``% of conversations (the rest stay with the champion).
        Calling it on the canary changes its share."""
        if not 0 < percent <= 100:
            raise RegistryError(f"--percent must be between 1 and 100, not {percent}")
        with self.store.transaction() as db:
            model = self.get(model_id)
            if model["status"] not in ("candidate", "canary"):
                raise RegistryError(f"model {model['name']} is {model['status']}: only a candidate can"
                                    " become the canary")
            current = self.canary()
            if current is not None and current["id"] != model["id"]:
                raise ConflictError(f"model {current['name']} is already the canary: promote it or roll it"
                                    " back first")
            if self.champion() is None:
                raise RegistryError("there is no champion yet: promote the first model directly")
            if model["status"] == "candidate":
                self._check_gate(model, force, "start the canary")
            self._set(db, model["id"], status="canary", canary_percent=int(percent),
                      canary_started_at=model.get("canary_started_at") or timeutil.now_iso())
            self.store.audit(actor, "model.canary", "model", model["id"], {
                "reason": reason, "from": model["status"], "to": "canary", "percent": int(percent),
                "previous_percent": model["canary_percent"], "forced": force,
            })
        return self.get(model["id"])

    def reject(self, model_id: int | str, actor: str, reason: str) -> dict:
        """Mark a candidate or canary as rejected (it never serves again)."""
        with self.store.transaction() as db:
            model = self.get(model_id)
            if model["status"] not in ("candidate", "canary"):
                raise RegistryError(f"model {model['name']} is {model['status']}: only a candidate or the"
                                    " canary can be rejected")
            self._set(db, model["id"], status="rejected", canary_percent=None)
            self.store.audit(actor, "model.reject", "model", model["id"],
                             {"reason": reason, "from": model["status"], "to": "rejected"})
        return self.get(model["id"])

    def rollback(self, actor: str, reason: str = "") -> dict:
        """Undo the latest change: a running canary is stopped (rejected); otherwise the champion
        is retired and the most recently retired former champion serves again. Returns the
        model that serves all traffic afterwards."""
        with self.store.transaction() as db:
            now = timeutil.now_iso()
            canary = self.canary()
            if canary is not None:
                self._set(db, canary["id"], status="rejected", canary_percent=None, rolled_back_at=now)
                self.store.audit(actor, "model.rollback", "model", canary["id"],
                                 {"reason": reason, "from": "canary", "to": "rejected"})
                champion = self.champion()
                if champion is None:
                    raise RegistryError("there is no champion to fall back to")
                return champion
            champion = self.champion()
            if champion is None:
                raise RegistryError("there is no champion to roll back")
            previous = self.store.one(
                "SELECT * FROM models WHERE status = 'retired' AND rolled_back_at IS NULL"
                " AND adapter_deleted_at IS NULL AND promoted_at IS NOT NULL"
                " ORDER BY retired_at DESC, id DESC LIMIT 1")
            if previous is None:
                raise RegistryError(f"no earlier champion is kept to roll back to (model {champion['name']}"
                                    " is the only one)")
            self._set(db, champion["id"], status="retired", retired_at=now, rolled_back_at=now)
            self._set(db, previous["id"], status="champion", promoted_by=actor, promoted_at=now,
                      retired_at=None)
            self.store.audit(actor, "model.rollback", "model", champion["id"], {
                "reason": reason, "from": "champion", "to": "retired", "restored": previous["id"],
            })
            self.store.audit(actor, "model.promote", "model", previous["id"], {
                "reason": f"rollback of model {champion['id']}" + (f": {reason}" if reason else ""),
                "from": "retired", "to": "champion", "rollback": True,
            })
        return self.get(previous["id"])

    # -- retention -----------------------------------------------------------------------

    def prune_adapters(self, actor: str = "cli") -> list[int]:
        """Delete the adapter directories of retired models beyond the newest ``keep_adapters``
        (never a champion's or canary's directory). Returns the pruned model ids."""
        retired = self.store.query(
            "SELECT id, adapter_path FROM models WHERE status = 'retired' AND adapter_deleted_at IS NULL"
            " ORDER BY retired_at DESC, id DESC")
        serving = {r["adapter_path"] for r in self.store.query(
            "SELECT adapter_path FROM models WHERE status IN ('champion', 'canary', 'candidate')")}
        pruned = []
        with self.store.transaction() as db:
            for row in retired[self.keep_adapters:]:
                path = Path(row["adapter_path"]) if row["adapter_path"] else None
                if path is not None and str(path) not in serving and (path / MANIFEST).is_file():
                    shutil.rmtree(path, ignore_errors=True)
                self._set(db, row["id"], adapter_deleted_at=timeutil.now_iso())
                pruned.append(row["id"])
            if pruned:
                self.store.audit(actor, "model.prune", "models", None,
                                 {"deleted_adapters": pruned, "keep": self.keep_adapters})
        return pruned

    # -- serving -----------------------------------------------------------------------

    def route(self, conversation_id: str | None) -> dict:
        """The model that drafts for this conversation: the canary for its share of
        conversations (by a hash of the id), the champion for the rest."""
        champion = self.champion()
        canary = self.canary()
        if canary is not None and conversation_id is not None \
                and canary_bucket(conversation_id) < (canary["canary_percent"] or 0):
            return canary
        if champion is None:
            raise NotFoundError("no champion model yet: register and promote one (`replyloop models promote`)")
        return champion

    def review_rates(self, model_id: int, since: str | None = None) -> dict:
        """Supervisor decisions on this model's drafts (drafted at or after ``since``, ISO time)."""
        row = self.store.one(
            "SELECT count(r.id) AS reviews,"
            " coalesce(sum(r.decision = 'approve'), 0) AS approved,"
            " coalesce(sum(r.decision = 'edit'), 0) AS edited,"
            " coalesce(sum(r.decision = 'reject'), 0) AS rejected"
            " FROM drafts d JOIN reviews r ON r.draft_id = d.id WHERE d.model_id = ? AND d.created_at >= ?"
            " AND r.automated = 0",  # deliver21: an automatic approval is no supervisor's evidence
            (model_id, since or ""))
        n = row["reviews"]
        return {**row, "approval_without_edit_rate": (row["approved"] / n) if n else None}
