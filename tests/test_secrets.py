"""Issue 15 part 6: redaction on the log handlers (child loggers too), no secrets in the
environment of a run's child processes, safe model names."""

from __future__ import annotations

import io
import json
import logging
import shlex

import pytest

from helpers import cli
from replyloop.config import Secrets

BOT, APP, SIGNING, INTAKE = "xoxb-1111-2222-secretbot", "xapp-1-A1-333-secretapp", "s1gn1ngs3cr3t", "intake-s3cret-77"
SECRETS = Secrets(slack_bot_token=BOT, slack_app_token=APP, slack_signing_secret=SIGNING, intake_token=INTAKE)


@pytest.fixture
def root_stream():
    """A real handler on the root logger, as `replyloop serve`'s logging.basicConfig sets up."""
    from replyloop.bot.logs import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)
    for h in [*root.handlers, logging.lastResort]:
        for f in [f for f in h.filters if isinstance(f, RedactingFilter)]:
            h.removeFilter(f)
    for name in ("bot", "slack_bolt", "slack_sdk"):
        for f in [f for f in logging.getLogger(name).filters if isinstance(f, RedactingFilter)]:
            logging.getLogger(name).removeFilter(f)


def test_records_of_child_loggers_are_redacted(root_stream):
    from replyloop.bot.logs import redacting_logger

    for name in ("bot", "slack_bolt", "slack_sdk"):  # what bot.server.serve() installs
        redacting_logger(name, SECRETS)
    logging.getLogger("bot.review").warning("chat.update failed with token %s", BOT)
    logging.getLogger("bot.intake").info("intake with Authorization: Bearer %s", INTAKE)
    logging.getLogger("slack_bolt.App").error("signature %s / app %s / other xoxp-9-9-9abc", SIGNING, APP)
    try:
        raise RuntimeError(f"Slack said no to {BOT}")
    except RuntimeError:
        logging.getLogger("bot.jobs").exception("job failed")
    text = root_stream.getvalue()
    assert "WARNING bot.review: chat.update failed with token [redacted]" in text
    assert "INFO bot.intake: intake with Authorization: Bearer [redacted]" in text
    assert "ERROR slack_bolt.App: signature [redacted] / app [redacted] / other [redacted]" in text
    assert "RuntimeError: Slack said no to [redacted]" in text
    for secret in (BOT, APP, SIGNING, INTAKE, "xoxp-9"):
        assert secret not in text


def test_the_run_child_processes_get_no_secrets(workspace, monkeypatch):
    """A real pipeline run: the trainer and the evaluation.command child write their environment."""
    from replyloop.pipeline import run_pipeline
    from replyloop.store import SampleIn

    config, store = workspace
    for name, value in (("SLACK_BOT_TOKEN", BOT), ("SLACK_APP_TOKEN", APP), ("SLACK_SIGNING_SECRET", SIGNING),
                        ("REPLYLOOP_INTAKE_TOKEN", INTAKE), ("SLACK_CLIENT_SECRET", "client-secret-1"),
                        ("KEEP_ME", "visible")):
        monkeypatch.setenv(name, value)
    for i in range(6):
        qid = store.add_question(f"问题{i}", f"c{i}", "物流查询")
        store.decide(store.add_draft(qid, f"回答{i}"), "approve", "U1")
    store.add_samples([SampleIn("导入", "回答")])
    config.train_config_path.parent.mkdir(parents=True, exist_ok=True)
    config.train_config_path.write_text("base_model: base\n", encoding="utf-8")
    (config.root / "base").mkdir()  # checked before the run: a local directory with config.json
    (config.root / "base" / "config.json").write_text("{}", encoding="utf-8")
    dump = config.root / "envs"
    dump.mkdir()
    trainer = config.root / "fake_trainer.py"
    trainer.write_text(
        "import json, os, sys; from pathlib import Path\n"
        "Path(sys.argv[2]).write_text(json.dumps(dict(os.environ)))\n"
        "out = Path(sys.argv[1]); out.mkdir(parents=True); (out / 'adapter_config.json').write_text('{}')\n"
        "(out / 'manifest.json').write_text(json.dumps({'base_model': 'base'}))\n", encoding="utf-8")
    config.file.training.command = "{python} %s {output_dir} %s" % (shlex.quote(str(trainer)),
                                                                     shlex.quote(str(dump / "train.json")))
    config.file.evaluation.command = ("{python} -c 'import json, os, sys; open(sys.argv[1], \"w\").write("
                                      "json.dumps(dict(os.environ))); sys.exit(3)' %s"
                                      % shlex.quote(str(dump / "eval.json")))
    result = run_pipeline(config, store, trigger="cli")
    assert result.status == "failed" and "evaluation exited with code 3" in result.message
    for child in ("train.json", "eval.json"):
        env = json.loads((dump / child).read_text())
        assert env["KEEP_ME"] == "visible"
        leaked = {k for k in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET",
                              "REPLYLOOP_INTAKE_TOKEN", "SLACK_CLIENT_SECRET") if k in env}
        assert not leaked, (child, leaked)
        assert not any(v in json.dumps(env) for v in (BOT, APP, SIGNING, INTAKE))


def test_child_env_keeps_the_rest():
    from replyloop.childenv import child_env

    env = child_env({"EXTRA": "1"}, base={"PATH": "/bin", "SLACK_BOT_TOKEN": BOT, "REPLYLOOP_HOME": "/w",
                                          "REPLYLOOP_INTAKE_TOKEN": INTAKE, "HF_TOKEN": "hf"})
    assert env == {"PATH": "/bin", "REPLYLOOP_HOME": "/w", "HF_TOKEN": "hf", "EXTRA": "1"}


# -- model names --------------------------------------------------------------------------------


def adapter(root, name):
    from test_registry import fake_adapter

    return fake_adapter(root, name)


@pytest.mark.parametrize("name,why", [
    ("1", "model name '1' is only digits: `models show 1` would find model id 1"),
    ("007", "model name '007' is only digits"),
    ("../../etc", "model name '../../etc' is not allowed"),
    ("has space", "model name 'has space' is not allowed"),
    ("-rm", "model name '-rm' is not allowed"),
    ("名字", "model name '名字' is not allowed"),
    ("x" * 65, "model name '" + "x" * 65 + "' is not allowed"),
])
def test_unsafe_model_names_are_refused(workspace, tmp_path, name, why):
    _, store = workspace
    result = cli("models", "register", adapter(tmp_path, "run-1"), "--name", name)
    assert result.exit_code == 2
    assert result.output.startswith("Error: " + why)
    assert "letters A-Z a-z, digits, '.', '_', '-'" in result.output
    assert store.scalar("SELECT count(*) FROM models") == 0


def test_a_directory_name_is_made_safe(workspace, tmp_path):
    _, store = workspace
    assert cli("models", "register", adapter(tmp_path, "42")).output == "model 1 model-42: candidate\n"
    assert cli("models", "register", adapter(tmp_path, "my run (v2)")).output == "model 2 my-run-v2: candidate\n"
    assert cli("models", "register", adapter(tmp_path / "b", "42")).output == "model 3 model-42-2: candidate\n"
    assert cli("models", "register", adapter(tmp_path, "ok-1.2_x"), "--name", "v1.2_final-3").exit_code == 0
    assert cli("models", "show", "model-42").output.startswith("model 1 model-42")


def test_a_later_call_without_secrets_keeps_redacting_them(root_stream):
    from replyloop.bot.logs import install_redaction, redacting_logger

    redacting_logger("bot", SECRETS)
    install_redaction(None)  # e.g. a Slack client built without the bot's secrets
    logging.getLogger("bot.review").warning("signing secret %s", SIGNING)
    assert "signing secret [redacted]" in root_stream.getvalue() and SIGNING not in root_stream.getvalue()
