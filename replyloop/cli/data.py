"""CLI: ``replyloop data import | export | stats | snapshot``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, console, print_json, workspace

data_app = typer.Typer(help="The curated dataset: import, export, stats, snapshots.", no_args_is_help=True)


@data_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="CSV (prompt,response[,category,intent]) or JSONL (prompt/response or messages)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="File encoding: utf-8 (BOM allowed) or gbk, gb18030, ..."),
    as_questions: bool = typer.Option(False, "--as-questions",
                                      help="The file holds customer questions (conversation_id,question[,category,draft]) to review, not samples."),
    config: Optional[Path] = ConfigOption,
):
    """Import approved Q&A pairs (or customer questions) into the store, all or nothing.

    Example: replyloop data import exports/faq.csv --encoding gbk
    """
    from replyloop.dataio import read_questions, read_samples

    cfg, store = workspace(config)
    with store:
        if as_questions:
            from replyloop.intake import ingest_questions

            questions = read_questions(file, encoding)
            ids = ingest_questions(cfg, store, questions, source="import")
            typer.echo(f"Imported {len(ids)} question(s) from {file}")
            return
        samples = read_samples(file, encoding)
        result = store.add_samples(samples, source="import")
        typer.echo(f"Imported {result.added} sample(s) from {file}, skipped {result.duplicates} duplicate(s)")


@data_app.command("export")
def export(
    out: Path = typer.Argument(..., help="lora-scripts: the train_data_dir to write metadata.csv into; jsonl/chatml: the file."),
    fmt: str = typer.Option("lora-scripts", "--format", "-f", help="lora-scripts | jsonl | chatml"),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", help="Export this snapshot instead of all samples."),
    split: Optional[str] = typer.Option(None, "--split", help="With --snapshot: train or heldout."),
    scrub: Optional[bool] = typer.Option(None, "--scrub-pii/--no-scrub-pii", help="Mask phones, emails, ID-card and order numbers (default: export.scrub_pii)."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="chatml: a system message for every sample (default: system_prompt of the workspace's training config)."),
    config: Optional[Path] = ConfigOption,
):
    """Write the dataset in a format other SFT tools read.

    Example: replyloop data export out/train_data --format lora-scripts
    """
    from replyloop.dataio import export_samples
    from replyloop.errors import DataFormatError
    from replyloop.pii import Scrubber

    if split not in (None, "train", "heldout"):
        raise DataFormatError(f"--split must be train or heldout, not {split!r}")
    if split and not snapshot:
        raise DataFormatError("--split needs --snapshot")
    cfg, store = workspace(config)
    with store:
        rows = store.snapshot_samples(snapshot, split) if snapshot else store.samples()
    opts = cfg.file.export
    scrubber = None
    if opts.scrub_pii if scrub is None else scrub:
        scrubber = Scrubber(phone=opts.mask_phone, email=opts.mask_email, id_card=opts.mask_id_card,
                            order=opts.mask_order)
    if system_prompt is None and fmt == "chatml":
        system_prompt = _training_system_prompt(cfg.train_config_path)
    target = export_samples(rows, fmt, out, scrubber=scrubber, system_prompt=system_prompt)
    typer.echo(f"Wrote {len(rows)} sample(s) to {target}")
    if scrubber is not None:
        masked = ", ".join(f"{k} {v}" for k, v in sorted(scrubber.counts.items()) if v) or "nothing"
        typer.echo(f"PII masked: {masked}")


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
    from rich.table import Table

    _, store = workspace(config)
    with store:
        s = store.stats()
    if as_json:
        print_json(s)
        return
    console.print(f"Samples: {s['samples']}   questions: {s['questions']}   pending reviews: {s['pending_reviews']}")
    console.print(f"Champion's snapshot: {s['champion_snapshot'] or '(no champion yet)'}   "
                  f"approved since: {s['approved_since_snapshot']}")
    for title, key in (("Category", "by_category"), ("Source", "by_source")):
        table = Table(title=None)
        table.add_column(title)
        table.add_column("Samples", justify="right")
        for name, n in s[key].items():
            table.add_row(name, str(n))
        console.print(table)


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
    state = "created" if snap.created else "unchanged (same content)"
    typer.echo(f"Snapshot {snap.hash}: {snap.train} train, {snap.heldout} held-out ({state})")
    if snap.without_heldout:
        typer.echo("No held-out question in: " + ", ".join(snap.without_heldout)
                   + " (all its questions were trained on by an earlier snapshot; its next new question will be held out)")


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
    _, store = workspace(config)
    with store:
        result = store.backup(dest, overwrite=force)
    if as_json:
        print_json(result)
        return
    typer.echo(f"Backed up to {result['path']} ({result['bytes']:,} bytes): {result['samples']} samples, "
               f"{result['questions']} questions, {result['reviews']} reviews, {result['models']} models")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
