"""Maintain the message catalogs with Babel (a source checkout's tool, not used at run time).

    python -m replyloop.i18n_catalog update    # extract _() / N_() / ngettext() ids, merge into zh_CN .po
                                               # (--pot: also write replyloop/locale/replyloop.pot)
    python -m replyloop.i18n_catalog compile   # .po -> .mo (the file stdlib gettext reads; package data)
    python -m replyloop.i18n_catalog check     # exit 1 on an untranslated, fuzzy or mismatched entry,
                                               # or on a .mo older than its .po

``update`` keeps every existing translation, adds new ids untranslated and marks ids that
disappeared from the code obsolete (dropped from the file), so ``check`` names what to translate.
"""

from __future__ import annotations

import io
import sys
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from replyloop.i18n import DOMAIN, LANGUAGES, LOCALE_DIR, placeholders

KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}
SOURCE_PACKAGES = ("replyloop", "bot", "evaluation", "training")


def source_roots() -> list[Path]:
    """The folders whose code is scanned: replyloop/ and, in a checkout, bot/ evaluation/ training/ beside it
    (in a wheel they are inside replyloop/)."""
    here = Path(__file__).resolve().parent
    roots = [here]
    for name in SOURCE_PACKAGES[1:]:
        beside = here.parent / name
        if (beside / "__init__.py").is_file() and not (here / name).is_dir():
            roots.append(beside)
    return roots


def pot_path() -> Path:
    return LOCALE_DIR / f"{DOMAIN}.pot"


def po_path(lang: str = "zh-CN") -> Path:
    return LOCALE_DIR / LANGUAGES[lang] / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(lang: str = "zh-CN") -> Path:
    return po_path(lang).with_suffix(".mo")


def extract():
    """A copy of the code's message ids (a fresh Catalog each call; the scan is cached)."""
    from copy import deepcopy

    return deepcopy(_extract())


@lru_cache(maxsize=1)
def _extract():
    """A Babel Catalog of every message id in the code, with the places it is used."""
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_dir

    catalog = Catalog(project="replyloop", domain=DOMAIN, charset="utf-8")
    for root in source_roots():
        for filename, lineno, message, comments, context in extract_from_dir(
            str(root), method_map=[("**.py", "python")], keywords=KEYWORDS,
            comment_tags=("TRANSLATORS:",), strip_comment_tags=True,
        ):
            location = (f"{root.name}/{filename}", lineno)
            catalog.add(message, None, [location], auto_comments=comments, context=context)
    return catalog


def read_po(path: Path):
    from babel.messages.pofile import read_po as _read

    with path.open("rb") as fh:
        return _read(fh, locale=path.parent.parent.name, domain=DOMAIN)


FIXED_DATE = datetime(2026, 12, 1, tzinfo=timezone.utc)


def write_po(catalog, path: Path, locations: bool = False) -> None:
    """Sorted by id, without source locations or changing dates: two changes to the code touch only
    their own entries, so catalogs merge cleanly."""
    from babel.messages.pofile import write_po as _write

    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.creation_date = catalog.revision_date = FIXED_DATE
    catalog.fuzzy = False
    from replyloop import __version__

    catalog.version = __version__
    catalog.last_translator = "replyloop maintainers"
    catalog.language_team = "zh_CN"
    buf = io.BytesIO()
    _write(buf, catalog, width=100, sort_output=True, omit_header=False, ignore_obsolete=True,
           no_location=not locations)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def compiled(catalog) -> bytes:
    from babel.messages.mofile import write_mo

    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    return buf.getvalue()


def update(lang: str = "zh-CN", pot: bool = False) -> Path:
    template = extract()
    if pot:  # the template with source locations, for translators' tools (not committed)
        write_po(template, pot_path(), locations=True)
    path = po_path(lang)
    if path.exists():
        catalog = read_po(path)
        catalog.update(template, no_fuzzy_matching=True)
    else:
        from babel.messages.catalog import Catalog

        catalog = Catalog(locale=LANGUAGES[lang], project="replyloop", domain=DOMAIN, charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
    write_po(catalog, path)
    return path


def compile(lang: str = "zh-CN") -> Path:
    target = mo_path(lang)
    data = compiled(read_po(po_path(lang)))
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _text(value) -> list[str]:
    return [v for v in value if v] if isinstance(value, (tuple, list)) else [value or ""]


def problems(lang: str = "zh-CN") -> list[str]:
    """What is wrong with a language's catalog against the code, one line each (empty: all good)."""
    path = po_path(lang)
    if not path.exists():
        return [f"{path}: missing (run `python -m replyloop.i18n_catalog update`)"]
    catalog = read_po(path)
    out = []
    for message in extract():
        if not message.id:
            continue
        where = ", ".join(f"{f}:{n}" for f, n in message.locations[:2])
        entry = catalog.get(message.id, context=message.context)
        ident = message.id if isinstance(message.id, str) else message.id[0]
        if entry is None:
            out.append(f"{path.name}: {ident!r} ({where}): no entry (run update)")
            continue
        strings = _text(entry.string)
        if not strings or not all(s.strip() for s in strings):
            out.append(f"{path.name}: {ident!r} ({where}): not translated")
            continue
        if entry.fuzzy:
            out.append(f"{path.name}: {ident!r} ({where}): fuzzy")
        ids = message.id if isinstance(message.id, (tuple, list)) else (message.id,)
        want = set().union(*(placeholders(i) for i in ids))
        for s in strings:
            got = placeholders(s)
            if got != want:
                out.append(f"{path.name}: {ident!r} ({where}): placeholders {sorted(got)} != {sorted(want)}")
    mo = mo_path(lang)
    if not mo.exists() or mo.read_bytes() != compiled(catalog):
        out.append(f"{mo}: out of date with {path.name} (run `python -m replyloop.i18n_catalog compile`)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "check"
    if command == "update":
        print(update(pot="--pot" in args))
        return 0
    if command == "compile":
        print(compile())
        return 0
    if command == "check":
        found = problems()
        for line in found:
            print(f"Error: {line}", file=sys.stderr)
        return 1 if found else 0
    print(f"Error: unknown command {command!r} (update, compile, check)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
