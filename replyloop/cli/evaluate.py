"""CLI: ``replyloop eval MODEL [--against champion|none|MODEL] [--json]`` and the golden suites
(``replyloop eval MODEL --suite [NAME]``, ``--export promptfoo``, ``--import-promptfoo FILE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, workspace
from replyloop.i18n import _
from replyloop.phrases import localized


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: Optional[str] = typer.Argument(None, help="Model id, name, or an adapter directory (registered if new)."),
        names: Optional[list[str]] = typer.Argument(None, metavar="NAME", help="With --suite: the suites to run (default: all)."),
        against: str = typer.Option("champion", "--against", help="champion, none, or a model id / name to compare with."),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Default: evaluation.max_new_tokens."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default: evaluation.batch_size."),
        snapshot: Optional[str] = typer.Option(None, "--snapshot", help="Held-out set of this snapshot (for adapters trained outside the store; default: the model's own)."),
        suite: bool = typer.Option(False, "--suite", help="Run the golden suites (evaluation.golden_dir) instead: all, or the NAMEs given after MODEL."),
        export: Optional[str] = typer.Option(None, "--export", metavar="promptfoo", help="With --suite: write the suites as a promptfoo config (to --out, default stdout)."),
        out: Optional[Path] = typer.Option(None, "--out", help="With --export: the file to write."),
        import_promptfoo: Optional[Path] = typer.Option(None, "--import-promptfoo", help="With --suite NAME: write a promptfoo YAML's tests as evals/NAME.yaml."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ):
        """Score a model's drafts on the held-out questions of its snapshot and apply the promotion gate.

        Exit code 3 when the gate fails (0 when it passes), 2 on bad input. With --suite: drafts
        every golden case and checks its assertions; exits with code 4 when any case fails (2: a
        malformed suite file).

        Example: replyloop eval adapters/run-12 --against champion

        Example: replyloop eval champion --suite returns --json
        """
        from replyloop.evaluation.evaluate import evaluate_model
        from replyloop.errors import EXIT_GATE_FAILED, ConfigError, NotFoundError
        from replyloop.registry import Registry

        names = list(names or [])
        if (not suite and (export or import_promptfoo or names)) or (not suite and model is None):
            from replyloop.cli.common import workspace_language

            workspace_language(config)  # the errors below in the workspace's language
        if not suite and (export or import_promptfoo):
            raise ConfigError(_("--export and --import-promptfoo work on golden suites: add --suite [NAME]"))
        if not suite and names:
            raise ConfigError(_("unexpected argument {value} (suite names go with --suite)").format(value=repr(names[0])))
        if suite and (export or import_promptfoo):  # no model: every argument is a suite name
            _suite_files_command(config, ([model] if model else []) + names, export, out, import_promptfoo)
            return
        if model is None:
            raise ConfigError(_("missing MODEL (a model id, a name, or an adapter directory)"))
        cfg, store = workspace(config)
        with store:
            registry = Registry(store, keep_adapters=cfg.file.training.keep_adapters)
            try:
                row = registry.get(model)
            except NotFoundError:
                if not (Path(model) / "manifest.json").is_file():
                    raise
                row = registry.register(model)
                typer.echo(_("Registered {path} as model {id} ({name})").format(path=model, id=row["id"],
                                                                                name=row["name"]), err=True)
            if suite:
                _run_suites(cfg, store, registry, row, names, against, max_new_tokens, batch_size, as_json)
                return
            if snapshot is not None:
                snapshot = store.resolve_snapshot(snapshot)  # a unique prefix, like git
            report = evaluate_model(cfg, store, row["id"], against=against, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, snapshot=snapshot)
        if as_json:
            print_json(report.to_dict())
        else:
            from replyloop.cli.tables import print_markdown

            print_markdown(report.summary_markdown(verdict=False))  # plain text: no ## / ** / ` marks
            typer.echo(report.gate.verdict())
        if not report.gate.passed:
            raise typer.Exit(EXIT_GATE_FAILED)


def _suite_names(names: list[str]) -> list[str] | None:
    """Suite names (also comma-separated); None: all."""
    found = [n.strip() for name in names for n in name.split(",") if n.strip()]
    return found or None


def _run_suites(cfg, store, registry, row, suite, against, max_new_tokens, batch_size, as_json) -> None:
    """``replyloop eval MODEL --suite [NAME]``: table or JSON; exit 4 when a case fails."""
    from replyloop.evaluation import golden

    directory = golden.golden_dir(cfg)
    if not golden.suite_files(directory):
        raise golden.GoldenError(_("{path}: no golden suite files (*.yaml); see README \"Golden suites\"").format(
            path=directory))
    suites = golden.load_suites(directory, _suite_names(suite))
    opts = cfg.file.evaluation
    generate = golden.local_generator(cfg, max_new_tokens=max_new_tokens or opts.max_new_tokens,
                                      batch_size=batch_size or opts.batch_size)
    kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, generate=generate)
    run = golden.run_suites(cfg, store, row, suites, **kwargs)
    champion = None
    if against not in (None, "none"):
        other = registry.champion() if against == "champion" else registry.get(against)
        if other is not None and other["id"] != row["id"]:
            champion = golden.run_suites(cfg, store, other, suites, save=False, **kwargs)
    changes = golden.compare(run, champion)
    if as_json:
        print_json({**run.to_dict(), "against": champion and {"id": champion.model_id, "name": champion.model_name},
                    "changes": changes})
    else:
        typer.echo(golden.render_table(run, changes))
        if champion is not None and golden.describe_changes(changes):
            typer.echo(_("Against {model}: {changes}").format(model=champion.model_name,
                                                              changes=localized(golden.describe_changes(changes))))
    if not run.passed:
        raise typer.Exit(golden.GOLDEN_FAILED_EXIT)


def _suite_files_command(config, suite, export, out, import_file) -> None:
    """``--suite --export promptfoo`` and ``--suite NAME --import-promptfoo FILE`` (no model needed)."""
    from replyloop.evaluation import golden, golden_promptfoo
    from replyloop.config import load_config
    from replyloop.errors import ConfigError

    cfg = load_config(config)
    directory = golden.golden_dir(cfg)
    if import_file is not None:
        names = _suite_names(suite)
        if export or not names or len(names) != 1:
            raise ConfigError(_("--import-promptfoo needs one suite name to write: --suite NAME --import-promptfoo FILE"))
        target = golden_promptfoo.import_promptfoo(import_file, directory, names[0])
        typer.echo(_("Wrote {path} ({count} cases)").format(
            path=target, count=len(golden.load_suites(directory, names)[0].cases)))
        return
    if export != "promptfoo":
        raise ConfigError(_("--export {value}: the only export format is promptfoo").format(value=export))
    import yaml

    suites = golden.load_suites(directory, _suite_names(suite))
    text = yaml.safe_dump(golden_promptfoo.to_promptfoo(suites), allow_unicode=True, sort_keys=False, width=1000)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(_("Wrote {path} ({count} cases)").format(path=out, count=sum(len(s.cases) for s in suites)),
                   err=True)
