"""violations.png: the legend never covers a bar (the real matplotlib figure, drawn)."""

from types import SimpleNamespace

from replyloop.evaluation.report import RuleCount


def test_the_violations_legend_covers_no_bar():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from replyloop.evaluation.charts import _violations

    rules = [RuleCount("promise.refund_guarantee", "block", 14, 15), RuleCount("terminology:waybill", "warn", 9, 9),
             RuleCount("promise.compensation", "block", 3, 3)]
    report = SimpleNamespace(label="2026-W48", violations=rules,
                             approved_violations=[RuleCount("terminology:waybill", "warn", 2, 2)])
    fig = _violations(report, lambda text: text)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    [ax] = fig.axes
    legends = fig.legends + ([ax.get_legend()] if ax.get_legend() else [])
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_width() > 0]
    assert len(bars) == 4
    assert not any(box.overlaps(bar) for bar in bars)
    assert box.y1 <= ax.get_window_extent(renderer).y0  # below the plot
