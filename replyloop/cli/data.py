"""CLI: ``replyloop data import | export | stats | snapshot``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, console, print_json, word, workspace
from replyloop.i18n import N_, _, fmt_number

data_app = typer.Typer(help="The curated dataset: import, export, stats, snapshots.", no_args_is_help=True)


@data_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="CSV (prompt,response[,category,intent]) or JSONL (prompt/response or messages)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="File encoding: utf-8 (BOM allowed) or gbk, gb18030, ..."),
    as_questions: bool = typer.Option(False, "--as-questions",
                                      help="The file holds customer questions (conversation_id,question[,category,draft]) to review, not samples."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes that validate a large file (default: one per CPU, at most 4, for files of 8 MB or more; 0: in this process)."),
    config: Optional[Path] = ConfigOption,
):
    """Import approved Q&A pairs (or customer questions) into the store, all or nothing.

    Example: replyloop data import exports/faq.csv --encoding gbk
    """
    from replyloop.dataio import import_file, read_questions

    cfg, store = workspace(config)
    with store:
        if as_questions:
            from replyloop.intake import ingest_questions

            questions = read_questions(file, encoding)
            ids = ingest_questions(cfg, store, questions, source="import")
            typer.echo(_("Imported {count} question(s) from {file}").format(count=len(ids), file=file))
            return
        result = import_file(store, file, encoding, workers=workers, source="import")
        for c in result.conflict_examples:
            other = (_("line {line}").format(line=c.other_line) if c.other_line
                     else _("stored sample #{sample_id}").format(sample_id=c.sample_id))
            typer.echo("Warning: " + _("{where}: the prompt {prompt} has a different answer on {other}").format(
                where=f"{file}:{c.line}", prompt=repr(_clip(c.prompt)), other=other), err=True)
        if result.conflicts > len(result.conflict_examples):
            typer.echo("Warning: " + _("{count} more row(s) with a prompt that has a different answer").format(
                count=result.conflicts - len(result.conflict_examples)), err=True)
        line = _("Imported {added} sample(s) from {file}, skipped {duplicates} duplicate(s)").format(
            added=result.added, file=file, duplicates=result.duplicates)
        if result.conflicts:
            line += _("; {conflicts} row(s) whose prompt has a different answer (see `replyloop data stats`)").format(
                conflicts=result.conflicts)
        typer.echo(line)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@data_app.command("export")
def export(
    out: Path = typer.Argument(..., help="lora-scripts: the train_data_dir to write metadata.csv into; llama-factory: the dataset_dir; jsonl/chatml: the file."),
    fmt: str = typer.Option("lora-scripts", "--format", "-f", help="lora-scripts | jsonl | chatml | llama-factory (alpaca) | llama-factory-sharegpt | kto | dpo (TRL preference data from reviews)"),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", help="Export this snapshot instead of all samples."),
    split: Optional[str] = typer.Option(None, "--split", help="With --snapshot: train or heldout."),
    scrub: Optional[bool] = typer.Option(None, "--scrub-pii/--no-scrub-pii", help="Mask phones, emails, ID-card and order numbers (default: export.scrub_pii)."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="chatml, llama-factory: a system message for every sample (chatml default: system_prompt of the workspace's training config)."),
    raw_csv: bool = typer.Option(False, "--raw-csv", help="lora-scripts: write cells exactly as stored, without the quote that stops a spreadsheet running =, +, -, @ cells as formulas (for programs, never for a spreadsheet)."),
    config: Optional[Path] = ConfigOption,
):
    """Write the dataset in a format other SFT tools read.

    A CSV cell that begins with = + - @ | % a tab or CR gets a leading ' so that a spreadsheet
    shows it as text instead of running it (--raw-csv turns that off).

    Example: replyloop data export out/train_data --format lora-scripts
    """
    from replyloop.dataio import export_samples
    from replyloop.errors import DataFormatError
    from replyloop.pii import Scrubber

    if split not in (None, "train", "heldout") or (split and not snapshot):
        from replyloop.cli.common import workspace_language

        workspace_language(config)
        if split not in (None, "train", "heldout"):
            raise DataFormatError(_("--split must be train or heldout, not {value}").format(value=repr(split)))
        raise DataFormatError(_("--split needs --snapshot"))
    cfg, store = workspace(config)
    opts = cfg.file.export
    scrubber = None
    if opts.scrub_pii if scrub is None else scrub:
        scrubber = Scrubber(phone=opts.mask_phone, email=opts.mask_email, id_card=opts.mask_id_card,
                            order=opts.mask_order)
    if fmt in ("kto", "dpo"):
        return _export_preferences(store, fmt, out, snapshot, split, scrubber)
    if system_prompt is None and fmt == "chatml":
        system_prompt = _training_system_prompt(cfg.train_config_path)
    written = 0

    def counted(rows):
        nonlocal written
        for row in rows:
            written += 1
            yield row

    with store:  # rows stream from the database into the file
        rows = store.iter_samples(snapshot, split)
        target = export_samples(counted(rows), fmt, out, scrubber=scrubber, system_prompt=system_prompt,
                                csv_safe=not raw_csv)
    typer.echo(_("Wrote {count} sample(s) to {path}").format(count=written, path=target))
    if fmt.startswith("llama-factory"):
        typer.echo(_("Registered it as dataset 'replyloop' in {path} (LLaMA-Factory: dataset_dir: {out}, "
                     "dataset: replyloop)").format(path=out / "dataset_info.json", out=out))
    if scrubber is not None:
        typer.echo(_masked_line(scrubber))


def _masked_line(scrubber) -> str:
    masked = ", ".join(f"{word(k)} {v}" for k, v in sorted(scrubber.counts.items()) if v) or _("nothing")
    return _("PII masked: {masked}").format(masked=masked)


def _export_preferences(store, fmt: str, out: Path, snapshot: str | None, split: str | None, scrubber) -> None:
    """``--format kto|dpo``: preference rows from reviews (frozen in ``--snapshot``, else all reviews now)."""
    from replyloop import preferences

    with store:
        if snapshot:
            rows = preferences.iter_rows(store, store.resolve_snapshot(snapshot), fmt, split)
        else:
            rows = ({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "label": p.label}
                    for p in preferences.collect(store.db.conn) if p.kind == fmt)
        target, written = preferences.export(rows, fmt, out, scrubber)
    if fmt == "kto":
        line = _("Wrote {count} unpaired preference rows (prompt, completion, label) to {path} "
                 "(TRL {trainer} format)")
    else:
        line = _("Wrote {count} preference pairs (prompt, chosen, rejected) to {path} (TRL {trainer} format)")
    typer.echo(line.format(count=written, path=target, trainer=f"{fmt.upper()}Trainer"))
    if written == 0:
        typer.echo("Warning: " + (_("no reviews gave rows of this kind yet (edits and rejections make DPO pairs)")
                                  if fmt == "dpo" else _("no reviews gave rows of this kind yet")), err=True)
    if scrubber is not None:
        typer.echo(_masked_line(scrubber))


def _training_system_prompt(path: Path) -> str | None:
    """``system_prompt`` of the workspace's training config, so a chatml export carries the system
    message training used (None when the file or the key is absent)."""
    from replyloop.yamlfile import load_yaml

    if not path.is_file():
        return None
    data = load_yaml(path).data
    value = data.get("system_prompt") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


@data_app.command("stats")
def stats(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption):
    """Counts per category and source, pending reviews, approvals since the champion's training snapshot.

    Example: replyloop data stats --json
    """
    from replyloop.cli.tables import print_table

    _cfg, store = workspace(config)
    with store:
        s = store.stats()
    if as_json:
        print_json(s)
        return
    console.print(_("Samples: {samples}   questions: {questions}   pending reviews: {pending}").format(
        samples=s["samples"], questions=s["questions"], pending=s["pending_reviews"]))
    if s["conflicting_prompts"]:
        console.print(_("Prompts with conflicting answers: {count} (the same prompt, different responses: keep "
                        "the right one)").format(count=s["conflicting_prompts"]))
    console.print(_("Champion's snapshot: {snapshot}   approved since: {approved}").format(
        snapshot=s["champion_snapshot"] or _("(no champion yet)"), approved=s["approved_since_snapshot"]))
    samples = _("Samples")
    for title, key in ((_("Category"), "by_category"), (_("Source"), "by_source")):
        rows = [(_source_word(name) if key == "by_source" else name, n) for name, n in s[key].items()]
        print_table((title, samples), rows, console=console, justify_right=(samples,))


@data_app.command("snapshot")
def snapshot(
    heldout_share: Optional[float] = typer.Option(None, "--heldout-share", help="Default: store.heldout_share."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
):
    """Freeze the current samples under a content hash, with a train / held-out split.

    Example: replyloop data snapshot
    """
    cfg, store = workspace(config)
    share = cfg.file.store.heldout_share if heldout_share is None else heldout_share
    with store:
        snap = store.create_snapshot(share, cfg.file.store.split_seed)
    if as_json:
        print_json(snap.__dict__)
        return
    state = _("created") if snap.created else _("unchanged (same content)")
    typer.echo(_("Snapshot {hash}: {train} train, {heldout} held-out ({state})").format(
        hash=snap.hash, train=snap.train, heldout=snap.heldout, state=state))
    if snap.without_heldout:
        typer.echo(_("No held-out question in: {categories} (all its questions were trained on by an earlier "
                     "snapshot; its next new question will be held out)").format(
            categories=", ".join(snap.without_heldout)))


@data_app.command("backup")
def backup(
    dest: str = typer.Argument(..., help="A file, or a directory (existing, or ending in /): replyloop-<time>.db inside it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
):
    """Copy the database (dataset, reviews, registry, audit log) while the bot keeps running.

    Uses SQLite's online backup, checks the copy's integrity, and writes it under its final name
    only when it is complete. Restore by stopping `replyloop serve` and copying the file back to
    `store.path`.

    Example: replyloop data backup /backups/replyloop/
    """
    _cfg, store = workspace(config)
    with store:
        result = store.backup(dest, overwrite=force)
    if as_json:
        print_json(result)
        return
    typer.echo(_("Backed up to {path} ({bytes} bytes): {samples} samples, {questions} questions, {reviews} "
                 "reviews, {models} models").format(
        path=result["path"], bytes=fmt_number(result["bytes"]), samples=result["samples"],
        questions=result["questions"], reviews=result["reviews"], models=result["models"]))


# where samples came from (store sources), for the stats table
SOURCES = {"import": N_("import"), "review": N_("review"), "slack": N_("slack"), "http": N_("http")}


def _source_word(name: str) -> str:
    msgid = SOURCES.get(name)
    return _(msgid) if msgid else name


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
