"""Charts of the weekly report (matplotlib, Agg, no pyplot state), with a CJK-capable font.

Category names are Chinese, and matplotlib's bundled DejaVu Sans has no CJK glyphs (they
render as empty boxes). The font is chosen once, in this order:

1. ``$REPLYLOOP_CJK_FONT``: a font file (.ttf/.otf/.ttc) you name;
2. Noto Sans CJK SC from the ``mplfonts`` package (a dependency of replyloop, OFL font);
3. an installed font with Chinese glyphs (Noto Sans CJK, Source Han Sans, WenQuanYi, ...,
   e.g. Debian's ``fonts-noto-cjk``).

Without any of them a warning names what was looked for, and the charts label non-ASCII
categories ``C1``, ``C2``, ... (report.md lists what each stands for), so they still read.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from replyloop.i18n import N_, _, fmt_percent, language, week_label, workspace

log = logging.getLogger("replyloop.report")

SAMPLE = "登录物流退换货支付售后服务异常查询政策失败"
KNOWN_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "Noto Sans CJK JP",
    "Noto Sans CJK TC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "SimHei",
    "Microsoft YaHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC", "AR PL UMing CN", "AR PL UKai CN",
    "Noto Serif CJK SC", "Source Han Serif SC",
)
MPLFONTS_FILE = "NotoSansCJKsc-Regular.otf"
NO_DATA = N_("no data")
COLORS = {"approved": "#2e7d32", "edited": "#f9a825", "rejected": "#c62828"}
DECISION_LABELS = {"approved": N_("approved unchanged"), "edited": N_("edited"), "rejected": N_("rejected")}


@dataclass(frozen=True)
class FontChoice:
    name: str | None        # the family matplotlib knows it by
    path: Path | None
    source: str             # env | mplfonts | system | none

    @property
    def cjk(self) -> bool:
        return self.name is not None


@dataclass
class Charts:
    files: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)   # shown label -> category, without a CJK font
    font: FontChoice | None = None


@functools.lru_cache(maxsize=8)
def _charmap(path: str) -> frozenset:
    """The code points a font file has glyphs for (empty when it cannot be read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except Exception:
        return frozenset()


def _covers(path: str, text: str = SAMPLE) -> bool:
    from matplotlib.ft2font import FT2Font

    try:
        charmap = FT2Font(path).get_charmap()
    except Exception:  # unreadable or unsupported font file: not a candidate
        return False
    return all(ord(ch) in charmap for ch in text)


def _register(path: Path, source: str) -> FontChoice | None:
    from matplotlib import font_manager

    if not path.is_file() or not _covers(str(path)):
        return None
    font_manager.fontManager.addfont(str(path))
    name = font_manager.FontProperties(fname=str(path)).get_name()
    return FontChoice(name, path, source)


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> FontChoice:
    """The CJK-capable font for the charts (see the module docstring for the order)."""
    from matplotlib import font_manager

    looked = []
    env = os.environ.get("REPLYLOOP_CJK_FONT")
    if env:
        choice = _register(Path(env).expanduser(), "env")
        if choice:
            return choice
        log.warning("REPLYLOOP_CJK_FONT=%s is not a readable font with Chinese glyphs; ignoring it", env)
        looked.append(f"REPLYLOOP_CJK_FONT={env}")
    spec = importlib.util.find_spec("mplfonts")
    if spec and spec.origin:
        choice = _register(Path(spec.origin).parent / "fonts" / MPLFONTS_FILE, "mplfonts")
        if choice:
            return choice
    looked.append(f"{MPLFONTS_FILE} from the mplfonts package")
    entries = font_manager.fontManager.ttflist
    by_name = {}
    for entry in entries:
        by_name.setdefault(entry.name, entry)
    for family in KNOWN_FAMILIES:
        entry = by_name.get(family)
        if entry and _covers(entry.fname):
            return FontChoice(entry.name, Path(entry.fname), "system")
    for entry in entries:  # any other installed font with the glyphs
        if entry.name not in KNOWN_FAMILIES and _covers(entry.fname):
            return FontChoice(entry.name, Path(entry.fname), "system")
    looked.append("installed fonts with Chinese glyphs (e.g. " + ", ".join(KNOWN_FAMILIES[:4]) + ")")
    log.warning("No CJK-capable font found (looked for %s): chart labels use C1, C2, ... for Chinese"
                " category names. Install mplfonts (pip) or fonts-noto-cjk (apt), or set"
                " REPLYLOOP_CJK_FONT to a font file.", "; ".join(looked))
    return FontChoice(None, None, "none")


NO_FONT = FontChoice(None, None, "none")


# -- rendering ------------------------------------------------------------------------------------

def render_charts(report, out_dir: str | Path, font: FontChoice | None = None) -> Charts:
    """Write consistency.png, reviews.png, automation.png and violations.png into ``out_dir``:
    titles, axis labels and legends in the workspace's language (``ui.language``); in English
    when no CJK font is available (Chinese titles would be empty boxes)."""
    out_dir = Path(out_dir)
    with chart_figures(report, font) as (figures, charts):
        for filename, fig in figures.items():
            path = out_dir / filename
            fig.savefig(path, format="png", dpi=100)
            charts.files[filename] = path
    return charts


@contextmanager
def chart_figures(report, font: FontChoice | None = None):
    """The report's four figures, ``({filename: Figure}, Charts)``, drawn in the language and the
    matplotlib settings (the CJK font) they are saved with; save or draw them inside the block."""
    import matplotlib

    font = find_cjk_font() if font is None else font
    labels: dict[str, str] = {}
    if not font.cjk:
        ascii_index = 0
        for cat in report.categories + [v.rule for v in report.violations]:
            if not cat.isascii() and cat not in labels.values():
                ascii_index += 1
                labels[f"C{ascii_index}"] = cat
    shown = {cat: short for short, cat in labels.items()}
    glyphs = (_charmap(str(font.path)) if font.cjk and font.path else None) or None

    def name(text: str) -> str:
        # data (a category, a rule, a model a customer or an admin named) may hold characters the
        # font lacks (emoji, Arabic): drawn as empty boxes. They read "?" in the chart; report.md
        # keeps the name as written.
        text = shown.get(text, text)
        if glyphs is None:
            return text
        return "".join(ch if ord(ch) in glyphs or ch.isspace() or ord(ch) < 128 else "?" for ch in text)

    rc = {"axes.unicode_minus": False, "font.size": 9}
    if font.cjk:
        rc.update({"font.family": "sans-serif", "font.sans-serif": [font.name, "DejaVu Sans"]})
    with workspace() if font.cjk else language("en"), matplotlib.rc_context(rc):
        figures = {filename: draw(report, name) for filename, draw in (
            ("consistency.png", _consistency), ("reviews.png", _reviews), ("automation.png", _automation),
            ("violations.png", _violations))}
        yield figures, Charts(labels=labels, font=font)


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _figure(width: float = 9.0, height: float = 4.5, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, cols)
    return fig, axes


def _no_data(ax, text: str | None = None) -> None:
    ax.text(0.5, 0.5, text or _(NO_DATA), ha="center", va="center", transform=ax.transAxes, fontsize=12, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _short(week: str) -> str:
    """An x-axis tick: the week number alone (``W48`` / ``第48周``)."""
    try:
        number = int(week.rsplit("W", 1)[1])
    except (IndexError, ValueError):
        return week
    # TRANSLATORS: an x-axis tick of the charts, the ISO week number alone
    return _("W{week:02d}").format(week=number)


def _week(label: str) -> str:
    """A data week label (``2026-W48``) as people read it (``2026年第48周``)."""
    try:
        year, number = label.split("-W")
        return week_label(int(year), int(number))
    except ValueError:
        return label


def _consistency(report, name):
    """Left: mean embedding similarity; right: mean chrF (character n-grams), per week."""
    fig, (left, right) = _figure(11.0, 4.5, cols=2)
    fig.suptitle(_("Champion consistency, last {weeks} weeks (to {week})").format(
        weeks=len(report.history), week=_week(report.label)))
    x = list(range(len(report.history)))
    champion = {p.week: p for p in report.consistency if p.role == "champion"}
    canary = {p.week: p for p in report.consistency if p.role == "canary"}
    if not champion and not canary:
        for ax in (left, right):
            _no_data(ax, _("no data: no evaluations of a champion in these {weeks} weeks").format(
                weeks=len(report.history)))
        return fig
    unreadable = {(p.week, p.role) for p in report.unreadable}

    def series(points, overall, per_category, key=None):
        values = []
        for w in report.history:
            p = points.get(w)
            v = None if p is None else (getattr(p, overall) if key is None else getattr(p, per_category).get(key))
            values.append(math.nan if v is None else v)
        return values

    for ax, overall, per_category, ylabel in (
            (left, "mean_similarity", "by_category", _("mean embedding similarity to approved reply")),
            (right, "mean_chrf", "chrf_by_category", _("mean chrF against approved reply"))):
        cats = sorted({c for p in champion.values() for c in getattr(p, per_category)})
        for i, cat in enumerate(cats):
            ax.plot(x, series(champion, overall, per_category, cat), marker=".", linewidth=1, alpha=0.8,
                    color=f"C{i % 10}", label=name(cat))
        ax.plot(x, series(champion, overall, per_category), marker="o", linewidth=2.5, color="black",
                label=_("champion (overall)"))
        if canary:
            ax.plot(x, series(canary, overall, per_category), marker="s", linewidth=2, linestyle="--",
                    color="#6a1b9a", label=_("canary (overall)"))
        ax.set_xticks(x, [_short(w) for w in report.history])
        ax.set_xlim(-0.3, len(x) - 0.7)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.set_title(_("embedding similarity (circled: model cannot read the references, not counted)")
                   if unreadable else _("embedding similarity"), fontsize=9)
    for i, w in enumerate(report.history):  # weeks whose embedding numbers the gate did not count
        p = champion.get(w)
        if p is not None and (w, "champion") in unreadable and p.mean_similarity is not None:
            left.plot([i], [p.mean_similarity], marker="o", markersize=14, markerfacecolor="none",
                      markeredgecolor="#c62828", linestyle="none")
    right.set_title(_("chrF (character n-grams)"), fontsize=9)
    right.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


def _reviews(report, name):
    fig, (left, right) = _figure(11.0, 4.5, cols=2)
    x = list(range(len(report.history)))
    totals = [report.decisions[w] for w in report.history]
    left.set_title(_("Supervisor decisions per week"))
    if not any(t.reviewed for t in totals):
        _no_data(left, _("no data: no reviews in these weeks"))
    else:
        bottom = [0] * len(x)
        for key in ("approved", "edited", "rejected"):
            values = [getattr(t, key) for t in totals]
            word = DECISION_LABELS[key]
            left.bar(x, values, bottom=bottom, color=COLORS[key], label=_(word))
            bottom = [b + v for b, v in zip(bottom, values)]
        left.set_xticks(x, [_short(w) for w in report.history])
        left.yaxis.set_major_locator(_integer_locator())
        left.set_ylabel(_("reviews"))
        left.legend(fontsize=8, frameon=False)
    per_cat = report.decisions_by_category.get(report.label, {})
    right.set_title(_("By category, {week}").format(week=_week(report.label)))
    if not per_cat:
        _no_data(right, _("no data: no reviews in {week}").format(week=_week(report.label)))
        return fig
    cats = sorted(per_cat)
    y = list(range(len(cats)))
    left_edge = [0] * len(cats)
    for key in ("approved", "edited", "rejected"):
        values = [getattr(per_cat[c], key) for c in cats]
        right.barh(y, values, left=left_edge, color=COLORS[key])
        left_edge = [a + b for a, b in zip(left_edge, values)]
    right.set_yticks(y, [name(c) for c in cats])
    right.invert_yaxis()
    right.xaxis.set_major_locator(_integer_locator())
    right.set_xlabel(_("reviews"))
    return fig


def _automation(report, name):
    fig, ax = _figure()
    ax.set_title(_("Automation rate: reviewed drafts approved without edit"))
    x = list(range(len(report.history)))
    rates = [report.decisions[w].automation_rate for w in report.history]
    if all(r is None for r in rates):
        _no_data(ax, _("no data: no reviews in these weeks"))
        return fig
    values = [math.nan if r is None else r * 100 for r in rates]
    ax.plot(x, values, marker="o", linewidth=2.5, color="#1565c0")
    for xi, v in zip(x, values):
        if not math.isnan(v):
            ax.annotate(fmt_percent(v / 100), (xi, v), textcoords="offset points", xytext=(0, 7), ha="center")
    ax.set_xticks(x, [_short(w) for w in report.history])
    ax.set_ylim(0, 105)
    ax.set_ylabel(_("% approved unchanged"))
    ax.grid(alpha=0.3)
    return fig


def _violations(report, name):
    fig, ax = _figure(9.0, 4.0)
    ax.set_title(_("Policy violations in drafts, {week}").format(week=_week(report.label)))
    if not report.violations:
        _no_data(ax, _("no data: no violations in {week} drafts").format(week=_week(report.label)))
        return fig
    rules = [v.rule for v in report.violations]
    approved = {v.rule: v.drafts for v in report.approved_violations}
    y = list(range(len(rules)))
    ax.barh(y, [v.drafts for v in report.violations], color="#ef6c00", label=_("drafts with the violation"))
    ax.barh(y, [approved.get(r, 0) for r in rules], color="#b71c1c", label=_("... of them approved (should be 0)"))
    ax.set_yticks(y, [name(r) for r in rules])
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_xlabel(_("drafts"))
    # below the axes, never over a bar (inside, "best" put it over the longest, topmost bar)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig
