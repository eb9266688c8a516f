"""The optimization report: JSON, a terminal table, and a dependency-free HTML page.

The JSON (``optimization.json`` in the new version's folder) is the record: every candidate
with its size, parameters, latency, throughput, memory and accuracy, the selection and why, and
``optimized_from``/``method`` for the repository to show. The HTML page holds the same table and
an inline SVG chart (a bar of latency per candidate, its accuracy beside it); a PNG of the same
chart is written only when matplotlib is importable.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwardpass.optimize.candidates import CandidateResult
from forwardpass.optimize.selection import Selection

__all__ = ["Report", "render_html", "render_png", "report_files", "report_table", "save_report"]


@dataclass(slots=True)
class Report:
    """Everything one run learned."""

    model: str
    optimized_from: int
    target: str
    max_accuracy_drop: float
    providers: Mapping[str, Any]
    data: Mapping[str, Any]
    measurement: Mapping[str, Any]
    candidates: list[CandidateResult]
    selection: Selection
    created: str
    versions: Mapping[str, str] = field(default_factory=dict)
    #: The version written, or None (original kept, or a dry run).
    version: int | None = None

    @property
    def method(self) -> str:
        chosen = next((c for c in self.candidates if c.name == self.selection.chosen), None)
        return chosen.method if chosen else "original"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "optimized_from": self.optimized_from,
            "method": self.method,
            "target": self.target,
            "max_accuracy_drop": self.max_accuracy_drop,
            "selection": self.selection.to_dict(),
            "providers": dict(self.providers),
            "data": dict(self.data),
            "measurement": dict(self.measurement),
            "candidates": [c.to_dict() for c in self.candidates],
            "created": self.created,
            "versions": dict(self.versions),
        }

    def headline(self) -> str:
        """One sentence on what was chosen and why (about the chosen candidate only)."""
        reason = self.selection.reason
        return reason[:1].upper() + reason[1:] + "."

    def notes(self) -> list[str]:
        """The lines printed under the table: data caveats, noise, the excluded candidates."""
        lines = [str(self.data["note"])] if self.data.get("note") else []
        if self.selection.noise is not None:
            lines.append(
                f"Latency noise between rounds: ±{self.selection.noise:.1%}; a smaller gain "
                "is not promoted."
            )
        if self.selection.over_budget:
            lines.append(
                "Over the accuracy budget, never promoted: "
                + ", ".join(self.selection.over_budget)
                + "."
            )
        lines += [f"{c.name} {c.status}: {c.reason}" for c in self.candidates if not c.measured]
        return lines

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _row(c: CandidateResult, chosen: str) -> dict[str, str]:
    p, a = c.performance, c.accuracy
    if c.status != "measured":
        state = f"{c.status}: {c.reason}"
    elif c.name == chosen:
        state = "chosen"
    else:
        state = "within budget" if c.within_budget else "over budget"
    return {
        "candidate": c.name,
        "size": "—" if c.size_bytes is None else f"{c.size_bytes / 1024:,.1f} KiB",
        "params": "—" if c.parameters is None else f"{c.parameters:,}",
        "p50/p99 b1 (ms)": "—" if p is None else f"{p.p50_ms:.3f} / {p.p99_ms:.3f}",
        "best batch p50/p99 (ms)": "—"
        if p is None
        else f"b{p.best_batch}: {p.best_p50_ms:.3f} / {p.best_p99_ms:.3f}",
        "throughput (/s)": "—" if p is None else f"{p.throughput:,.0f}",
        "peak mem (MiB)": _fmt(p.peak_memory_mb if p else None, ".1f"),
        "accuracy": "—" if a is None else f"{a.metric} {a.value:.4f}",
        "drop": _fmt(a.drop if a else None, "+.4f"),
        "state": state,
    }


def _compact_row(c: CandidateResult, chosen: str) -> dict[str, str]:
    """The columns that fit a terminal of 80 columns (the JSON and HTML hold them all)."""
    p, a = c.performance, c.accuracy
    state = c.status if c.status != "measured" else _row(c, chosen)["state"]
    return {
        "candidate": c.name,
        "KiB": "—" if c.size_bytes is None else f"{c.size_bytes / 1024:,.1f}",
        "p50 ms": "—" if p is None else f"{p.p50_ms:.3f}",
        "p99 ms": "—" if p is None else f"{p.p99_ms:.3f}",
        "best/s": "—" if p is None else f"{p.throughput:,.0f}",
        "accuracy": "—" if a is None else f"{a.value:.4f}",
        "drop": _fmt(a.drop if a else None, "+.4f"),
        "state": state,
    }


def report_table(report: Report) -> Any:
    """A rich :class:`~rich.table.Table` of the candidates, narrow enough for 80 columns.

    Latencies are batch 1; best/s is the throughput at the best batch size; skipped and failed
    candidates' reasons are in :meth:`Report.notes`.
    """
    from rich.table import Table

    rows = [_compact_row(c, report.selection.chosen) for c in report.candidates]
    accuracy = next((c.accuracy for c in report.candidates if c.accuracy), None)
    basis = f"{accuracy.metric}, {accuracy.basis}" if accuracy else "not measured"
    table = Table(
        title=f"{report.model} v{report.optimized_from} → target {report.target}; "
        f"accuracy: {basis}; budget {report.max_accuracy_drop}",
        title_justify="left",
    )
    for column in rows[0]:
        table.add_column(
            column,
            no_wrap=column == "candidate",
            justify="left" if column in ("candidate", "state") else "right",
        )
    for row, c in zip(rows, report.candidates, strict=True):
        style = (
            "bold green"
            if c.name == report.selection.chosen
            else (
                "red" if c.within_budget is False else ("dim" if c.status != "measured" else None)
            )
        )
        table.add_row(*row.values(), style=style)
    return table


def _points(report: Report) -> list[tuple[str, float, float, str]]:
    points = []
    for c in report.candidates:
        if c.performance is None or c.accuracy is None:
            continue
        colour = (
            "#1a7f37"
            if c.name == report.selection.chosen
            else ("#0969da" if c.within_budget else "#cf222e")
        )
        points.append((c.name, c.performance.p50_ms, c.accuracy.value, colour))
    return points


def _svg(report: Report, width: int = 720) -> str:
    """Horizontal bars of batch-1 p50 latency, one row per candidate.

    One row each, the name left of its bar and the accuracy right of it, so labels can never
    overlap, however close the candidates' numbers are (a scatter's labels did).
    """
    points = _points(report)
    if not points:
        return "<p>No candidate was measured.</p>"
    metric = next(c.accuracy.metric for c in report.candidates if c.accuracy)
    row, top, bottom = 22, 10, 40
    label = 12 + 7 * max(len(name) for name, *_ in points)
    right = 150
    height = top + row * len(points) + bottom
    longest = max(p[1] for p in points) or 1.0
    span = width - label - right

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<line x1="{label}" y1="{top}" x2="{label}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{label + span / 2}" y="{height - 12}" text-anchor="middle">'
        f"batch-1 p50 latency (ms); right of each bar: {html.escape(metric)}</text>",
    ]
    for i, (name, x, y, colour) in enumerate(points):
        y_top = top + i * row
        bar = max(x / longest * span, 1.0)
        parts += [
            f'<text x="{label - 6}" y="{y_top + 15}" text-anchor="end">{html.escape(name)}</text>',
            f'<rect x="{label}" y="{y_top + 4}" width="{bar:.1f}" height="{row - 8}" '
            f'fill="{colour}"><title>{html.escape(name)}: {x:.3f} ms, {y:.4f}</title></rect>',
            f'<text x="{label + bar + 6:.1f}" y="{y_top + 15}">{x:.3f} ms · {y:.4f}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: Report) -> bytes:
    """A self-contained HTML page: summary, the scatter, the table."""
    rows = [_row(c, report.selection.chosen) for c in report.candidates]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    data = html.escape(json.dumps(dict(report.data), ensure_ascii=False))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>forwardpass optimize: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,td:last-child{{text-align:left}}</style>
</head><body>
<h1>{html.escape(report.model)}: v{report.optimized_from} optimized for
{html.escape(report.target)}</h1>
<p><b>{html.escape(report.headline())}</b></p>
{"".join(f"<p>{html.escape(line)}</p>" for line in report.notes())}
<p>Rule: {html.escape(report.selection.rule)}. Accuracy budget: {report.max_accuracy_drop}.
Green: chosen; blue: within budget; red: over budget.</p>
{_svg(report)}
<table><tr>{head}</tr>
{body}
</table>
<p>Data: <code>{data}</code></p>
<p>Created {html.escape(report.created)}.</p>
</body></html>
"""
    return page.encode()


def render_png(report: Report) -> bytes | None:
    """The chart as PNG bytes, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    points = _points(report)
    if not points:
        return None
    # Horizontal bars, one row per candidate: the names sit on the y axis and cannot overlap.
    fig, ax = plt.subplots(figsize=(7.2, 1.2 + 0.35 * len(points)), dpi=100)
    names = [p[0] for p in points]
    ax.barh(range(len(points)), [p[1] for p in points], color=[p[3] for p in points])
    ax.set_yticks(range(len(points)), names, fontsize=8)
    ax.invert_yaxis()
    for i, (_, x, y, _) in enumerate(points):
        ax.annotate(f"{y:.4f}", (x, i), textcoords="offset points", xytext=(4, -3), fontsize=8)
    metric = next(c.accuracy.metric for c in report.candidates if c.accuracy)
    ax.set_xlabel(f"batch-1 p50 latency (ms); beside each bar: {metric}")
    ax.set_xlim(left=0)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_files(report: Report) -> dict[str, bytes]:
    """The files saved beside a version (or into a report folder): JSON, HTML, maybe PNG."""
    files = {"optimization.json": report.to_json(), "optimization.html": render_html(report)}
    png = render_png(report)
    if png is not None:
        files["optimization.png"] = png
    return files


def save_report(report: Report, folder: Path) -> list[Path]:
    """Write the report files into ``folder`` (created); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in report_files(report).items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written
