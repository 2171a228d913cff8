"""A report as PDF (reportlab: charts, then tables that run on over pages) and as CSV with the same numbers.

Ten hosts fit on one A4 page: charts, the host table and the alerts. For
more, the host table continues over as many pages as it needs, its header
repeated, and the top 10 busiest and idlest hosts get their own tables.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import NamedTuple
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import LongTable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from gateway.report_data import ReportData
from rules_compiler.catalog import CATALOG

MARGIN = 1.0 * cm
WIDTH = A4[0] - 2 * MARGIN
METRICS_PER_TABLE = 5
TOP = 10
LINE_COLOURS = tuple(colors.HexColor(c) for c in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"))


class AlertLine(NamedTuple):
    rule: str
    severity: str
    fired: int
    longest_s: int
    unacknowledged: int


class HostAlerts(NamedTuple):
    fired: int
    unacknowledged: int
    longest_s: int


class Report(NamedTuple):
    """Everything one report shows."""

    title: str
    scope: str  # in words: "every host", "tags role=gpu", "hosts a, b"
    timezone: str
    hosts: list[tuple[str, str]]  # (host_id, hostname) of the scope, by id
    data: ReportData
    alerts: list[AlertLine]  # by rule, most fired first
    host_alerts: dict[str, HostAlerts]

    def ranked(self) -> list[tuple[str, float]]:
        """(host, avg of the first metric) for hosts that have it, busiest first."""
        first = self.data.metrics[0]
        pairs = [(h, self.data.stats.get(h, {}).get(first)) for h, _ in self.hosts]
        return sorted(((h, s.avg) for h, s in pairs if s and s.avg is not None), key=lambda p: (-p[1], p[0]))


def _label(metric: str) -> str:
    unit = CATALOG[metric].unit
    return f"{metric} ({unit})" if unit else metric


def _num(value: float | None) -> str:
    if value is None or value != value:  # absent or NaN
        return "-"
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.1f}"


def _duration(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def local_time(ts: int, tz: str, fmt: str = "%a %d %b %Y %H:%M") -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime(fmt)


def render_csv(report: Report) -> bytes:
    """One row per host: avg, p95, max of each metric, busy GPU-hours and alerts, as in the PDF."""
    data = report.data
    out = io.StringIO()
    writer = csv.writer(out)
    stat_columns = [f"{m}:{agg}" for m in data.metrics for agg in ("avg", "p95", "max")]
    writer.writerow(["host_id", "hostname", *stat_columns, "gpu_hours", "alerts_fired", "alerts_unacknowledged"])
    for host, hostname in report.hosts:
        stats = data.stats.get(host, {})
        values = [getattr(stats.get(m), agg, None) for m in data.metrics for agg in ("avg", "p95", "max")]
        alerts = report.host_alerts.get(host, HostAlerts(0, 0, 0))
        gpu = data.gpu_hours.get(host)
        writer.writerow(
            [host, hostname, *("" if v is None else f"{v:.3f}" for v in values)]
            + ["" if gpu is None else f"{gpu:.3f}", alerts.fired, alerts.unacknowledged]
        )
    return out.getvalue().encode()


def render_pdf(report: Report) -> bytes:
    """The report on A4: title and period, fleet charts, the host table, top hosts, alerts."""
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7.5, leading=9)
    data = report.data
    tz = report.timezone
    story = [
        # Paragraphs read markup: names and tags are text, escaped ("R&D <gpu>" is no tag).
        Paragraph(escape(report.title), styles["Title"]),
        Paragraph(
            escape(
                f"Period {local_time(data.start, tz)} to {local_time(data.end, tz)} ({tz}); scope: {report.scope}; "
                f"{len(report.hosts)} hosts, {len(data.stats)} with data."
            ),
            small,
        ),
        Paragraph(data.source.p95_note, small),
        Spacer(1, 0.2 * cm),
    ]
    if data.trend:
        story.append(_trend_chart(report))
    ranked = report.ranked()
    if ranked:
        story.append(_top_bars(report, ranked))
    story.append(Spacer(1, 0.2 * cm))
    for k in range(0, len(data.metrics), METRICS_PER_TABLE):
        story += [_host_table(report, data.metrics[k : k + METRICS_PER_TABLE], first=k == 0), Spacer(1, 0.3 * cm)]
    if len(report.hosts) > TOP and ranked:
        story += [_top_tables(report, ranked), Spacer(1, 0.3 * cm)]
    story.append(_alerts_table(report, small))
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN, bottomMargin=MARGIN,
        title=report.title, author="fleetwatch",
    )  # fmt: skip
    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
    return out.getvalue()


def _footer(canvas, doc) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 7)
    canvas.drawRightString(A4[0] - MARGIN, 0.5 * cm, f"fleetwatch report, page {doc.page}")
    canvas.restoreState()


def _trend_chart(report: Report) -> Drawing:
    data = report.data
    height = 5.2 * cm
    drawing = Drawing(WIDTH, height)
    title = "Fleet average per day" if data.trend_step_s >= 86400 else "Fleet average per hour"
    drawing.add(String(0, height - 10, title, fontName="Helvetica-Bold", fontSize=9))
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 30, 20, WIDTH - 180, height - 40
    lines = [(m, pts) for m, pts in data.trend.items() if pts]
    plot.data = [[(ts, v) for ts, v in pts] for _, pts in lines] or [[(data.end, 0)]]
    for i in range(len(lines)):
        plot.lines[i].strokeColor = LINE_COLOURS[i % len(LINE_COLOURS)]
        plot.lines[i].strokeWidth = 1.2
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax, plot.yValueAxis.valueStep = 0, 100, 25
    plot.yValueAxis.labels.fontSize = plot.xValueAxis.labels.fontSize = 6.5
    stamps = sorted({ts for _, pts in lines for ts, _ in pts})
    if stamps:
        plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = stamps[0], max(stamps[-1], stamps[0] + 1)
        plot.xValueAxis.valueSteps = stamps[:: max(1, len(stamps) // 8)]
    fmt = "%a %d" if data.trend_step_s >= 86400 else "%H:%M"
    plot.xValueAxis.labelTextFormat = lambda ts: local_time(int(ts), report.timezone, fmt)
    drawing.add(plot)
    legend = Legend()
    legend.x, legend.y = WIDTH - 140, height - 25
    legend.fontSize, legend.columnMaximum = 6.5, 6
    legend.colorNamePairs = [(LINE_COLOURS[i % len(LINE_COLOURS)], _label(m)) for i, (m, _) in enumerate(lines)]
    drawing.add(legend)
    return drawing


def _top_bars(report: Report, ranked: list[tuple[str, float]]) -> Drawing:
    height = 5.5 * cm
    drawing = Drawing(WIDTH, height)
    metric = _label(report.data.metrics[0])
    half = WIDTH / 2
    for k, (title, pairs) in enumerate(
        ((f"Busiest hosts, avg {metric}", ranked[:TOP]), (f"Idlest hosts, avg {metric}", ranked[::-1][:TOP]))
    ):
        drawing.add(String(k * half, height - 10, title, fontName="Helvetica-Bold", fontSize=8))
        chart = HorizontalBarChart()
        chart.x, chart.y = k * half + 75, 10
        chart.width, chart.height = half - 95, height - 30
        # Drawn bottom-up: reversed, the first of the list is at the top.
        chart.data = [[v for _, v in reversed(pairs)]]
        chart.categoryAxis.categoryNames = [h[:18] for h, _ in reversed(pairs)]
        chart.categoryAxis.labels.fontSize = chart.valueAxis.labels.fontSize = 6.5
        chart.valueAxis.valueMin = 0
        chart.valueAxis.valueMax = (
            max(100.0, max(v for _, v in pairs)) if CATALOG[report.data.metrics[0]].unit == "%" else None
        )
        chart.bars[0].fillColor = LINE_COLOURS[3 if k == 0 else 2]
        chart.barLabelFormat = "%.1f"
        chart.barLabels.fontSize = 6
        chart.barLabels.boxAnchor = "w"
        chart.barLabels.dx = 3
        drawing.add(chart)
    return drawing


_GRID = [
    ("FONT", (0, 0), (-1, -1), "Helvetica", 6.5),
    ("FONT", (0, 0), (-1, 1), "Helvetica-Bold", 6.5),
    ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
    ("LINEBELOW", (0, 1), (-1, 1), 0.5, colors.black),
    ("ROWBACKGROUNDS", (0, 2), (-1, -1), [colors.white, colors.HexColor("#f0f0f0")]),
    ("TOPPADDING", (0, 0), (-1, -1), 1),
    ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
]


def _host_table(report: Report, metrics: list[str], first: bool) -> LongTable:
    data = report.data
    extra = ["GPU h", "alerts"] if first else []
    head = ["host"] + [x for m in metrics for x in (m, "", "")] + extra
    # The unit under the name: "gpu.memory_used_pct (%)" is wider than its three columns.
    sub = [""] + [f"{agg} {CATALOG[m].unit}".strip() for m in metrics for agg in ("avg", "p95", "max")]
    sub += [""] * len(extra)
    rows = [head, sub]
    for host, _ in report.hosts:
        stats = data.stats.get(host, {})
        cells = [host[:28]] + [_num(getattr(stats.get(m), agg, None)) for m in metrics for agg in ("avg", "p95", "max")]
        if first:
            alerts = report.host_alerts.get(host)
            cells += [_num(data.gpu_hours.get(host)), str(alerts.fired) if alerts else "0"]
        rows.append(cells)
    host_w, extra_w = 3.0 * cm, 1.2 * cm
    stat_w = (WIDTH - host_w - extra_w * len(extra)) / (3 * METRICS_PER_TABLE)
    style = [*_GRID, ("FONT", (0, 1), (-1, 1), "Helvetica-Bold", 5.5)]
    for i in range(len(metrics)):
        style += [("SPAN", (1 + 3 * i, 0), (3 + 3 * i, 0)), ("ALIGN", (1 + 3 * i, 0), (3 + 3 * i, 0), "CENTER")]
    return LongTable(
        rows,
        colWidths=[host_w] + [stat_w] * (3 * len(metrics)) + [extra_w] * len(extra),
        repeatRows=2,
        style=TableStyle(style),
        hAlign="LEFT",
    )


def _top_tables(report: Report, ranked: list[tuple[str, float]]) -> Table:
    metric = _label(report.data.metrics[0])
    busiest, idlest = ranked[:TOP], ranked[::-1][:TOP]
    rows = [
        [f"Top {TOP} busiest, avg {metric}", "", f"Top {TOP} idlest, avg {metric}", ""],
        ["host", "avg", "host", "avg"],
    ]
    for k in range(max(len(busiest), len(idlest))):
        row = []
        for side in (busiest, idlest):
            row += [side[k][0], _num(side[k][1])] if k < len(side) else ["", ""]
        rows.append(row)
    style = [*_GRID, ("SPAN", (0, 0), (1, 0)), ("SPAN", (2, 0), (3, 0)), ("ALIGN", (0, 0), (-1, 0), "LEFT")]
    return Table(rows, colWidths=[WIDTH / 2 - 2 * cm, 2 * cm] * 2, style=TableStyle(style), hAlign="LEFT")


def _alerts_table(report: Report, style) -> Table | Paragraph:
    if not report.alerts:
        return Paragraph("Alerts: none fired in the period.", style)
    fired = sum(a.fired for a in report.alerts)
    unacked = sum(a.unacknowledged for a in report.alerts)
    longest = max(a.longest_s for a in report.alerts)
    rows = [
        [f"Alerts: {fired} fired, {unacked} never acknowledged, longest {_duration(longest)}", "", "", "", ""],
        ["rule", "severity", "fired", "longest", "unacknowledged"],
    ]
    rows += [
        [a.rule[:60], a.severity, str(a.fired), _duration(a.longest_s), str(a.unacknowledged)] for a in report.alerts
    ]
    style_ = [*_GRID, ("SPAN", (0, 0), (-1, 0)), ("ALIGN", (0, 0), (-1, 0), "LEFT")]
    return LongTable(
        rows,
        colWidths=[8 * cm, 2 * cm, 2 * cm, 2.5 * cm, 2.5 * cm],
        repeatRows=2,
        style=TableStyle(style_),
        hAlign="LEFT",
    )
