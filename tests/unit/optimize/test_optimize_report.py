"""The report's headline, chart and terminal table; the interleaved measuring rounds."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from forwardpass.optimize import measure as measure_module
from forwardpass.optimize.accuracy import Accuracy
from forwardpass.optimize.candidates import CandidateResult
from forwardpass.optimize.measure import MeasureSettings, Performance, measure_all
from forwardpass.optimize.report import Report, render_html, report_table
from forwardpass.optimize.selection import select
from forwardpass.optimize.target import Target

NAMES = ["original", "graph-ort", "graph-onnxsim", "fp16", "int8-dynamic-pc",
         "int8-static-s8s8-pc", "int4-block32"]  # fmt: skip


def _candidate(name: str, p50: float, drop: float) -> CandidateResult:
    rounds = (p50, p50 * 1.01, p50 * 0.99)
    perf = Performance(p50, p50 * 2, 8, p50, p50 * 2, 1000 / p50, 10.0, "test",
                       {"1": {"p50_ms": p50}}, rounds)  # fmt: skip
    acc = Accuracy("classification", "labels", "top1", 0.98 - drop, drop)
    return CandidateResult(name, name.split("-")[0], "", path=None, size_bytes=40_000,
                           parameters=9802, performance=perf, accuracy=acc)  # fmt: skip


def _report() -> Report:
    # Close latencies and equal accuracies: a scatter drew these labels on top of each other.
    drops = [0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.2]
    cands = [_candidate(n, 0.020 + 0.0001 * i if n != "fp16" else 0.010, d)
             for i, (n, d) in enumerate(zip(NAMES, drops, strict=True))]  # fmt: skip
    cands.append(CandidateResult("int8-static", "int8-static", "", "skipped", "no calibration"))
    selection = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    return Report("digits", 1, "cpu", 0.01, {}, {}, {}, cands, selection, "now")


def test_the_headline_of_a_promotion_is_about_the_chosen_candidate() -> None:
    report = _report()
    assert report.selection.promoted and report.selection.chosen == "fp16"
    headline = report.headline()
    assert headline.startswith("Promoted fp16") and "within the budget" in headline
    assert "over the" not in headline and "budget (" not in headline and "int4" not in headline
    notes = "\n".join(report.notes())
    assert "never promoted: int8-static-s8s8-pc, int4-block32" in notes
    assert "int8-static skipped: no calibration" in notes and "noise" in notes


def test_chart_labels_do_not_overlap() -> None:
    page = render_html(_report()).decode()
    svg = page[page.index("<svg") : page.index("</svg>")]
    width = int(re.search(r'<svg[^>]*width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    names = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" text-anchor="end">([^<]+)</text>', svg)
    assert sorted(n for *_, n in names) == sorted(NAMES)
    rows = sorted(float(y) for _, y, _ in names)
    assert all(b - a >= 14 for a, b in itertools.pairwise(rows))  # 12 px font
    # Each name is right-aligned left of the bars, and every label stays inside the picture.
    assert all(float(x) - 7 * len(n) >= 0 for x, _, n in names)
    values = re.findall(r'<text x="([\d.]+)" y="[\d.]+">([^<]+ ms · [^<]+)</text>', svg)
    assert len(values) == len(NAMES)
    assert all(float(x) + 7 * len(v) <= width for x, v in values)
    assert headline_in(page)


def headline_in(page: str) -> bool:
    return "<b>Promoted fp16" in page and "never promoted: int8-static-s8s8-pc" in page


@pytest.mark.parametrize("terminal", [False, True])
def test_the_table_fits_80_columns(terminal: bool) -> None:
    import io

    from rich.console import Console

    from forwardpass.cli.console import show

    buffer = io.StringIO()
    show(Console(file=buffer, width=80, force_terminal=terminal), report_table(_report()))
    text = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue())
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in NAMES:  # whole, on one line each
        assert any(line.lstrip("│ ").startswith(name + " ") for line in text.splitlines())
    if not terminal:
        assert "\x1b" not in buffer.getvalue() and not re.search("[─━│┃┏┓└┘]", text)


def test_rounds_are_interleaved(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    def one(path: Path, inputs: Any, providers: Any, settings: MeasureSettings, *_: Any) -> Any:
        order.append(path.name)
        assert settings.iterations == 5 and settings.rounds == 1  # a share of 20 over 4
        if path.name == "bad" and len(order) > 3:
            raise RuntimeError("boom")
        p50 = {"a": 1.0, "b": 2.0, "bad": 3.0}[path.name] + len(order) / 100
        by_batch = {"1": {"p50_ms": p50, "p99_ms": p50, "throughput": 1000 / p50}}
        return {"p50_ms": p50, "by_batch": by_batch, "peak_memory_mb": float(len(order)),
                "memory_kind": "test"}  # fmt: skip

    monkeypatch.setattr(measure_module, "_one", one)
    settings = MeasureSettings(iterations=20, rounds=4, isolate=False)
    paths = {n: Path(n) for n in ("a", "b", "bad")}
    result = measure_all(paths, {}, [], settings, batching=False, max_batch=1)
    assert order == ["a", "b", "bad", "a", "b", "bad", "a", "b", "a", "b"]
    a = result["a"]
    assert isinstance(a, Performance) and a.rounds_p50_ms == (1.01, 1.04, 1.07, 1.09)
    assert a.p50_ms == pytest.approx(1.055) and a.peak_memory_mb == 9.0
    assert isinstance(result["bad"], RuntimeError)
    assert replace(a, rounds_p50_ms=(1.0,)).spread is None
    assert a.spread == pytest.approx(0.08 / 1.055)
