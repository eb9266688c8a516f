"""``manifest.json``: what is in a bundle, and how it behaved on the build machine.

The measurements run the bundle's own runner in a fresh interpreter (``python -I``, a clean
environment, and ``forwardpass`` made unimportable), so they are what a device that has only
numpy and onnxruntime sees: cold start is process start to the first answer line, peak memory
is that process's maximum resident set (``RUSAGE_CHILDREN`` of a small measuring
interpreter that started it), latency is the runner's own
``--repeat`` timing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forwardpass.errors import InternalError

__all__ = ["Manifest", "Measurement", "RunnerAnswers", "measure_process", "run_runner"]

#: Imports ``forwardpass`` must fail in the runner's process: proof the bundle stands alone.
_LAUNCH = (
    "import runpy, sys; sys.modules['forwardpass'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass(frozen=True, slots=True)
class Measurement:
    cold_start_s: float
    peak_rss_mib: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_count: int
    machine: str = field(default_factory=platform.machine)
    python: str = field(default_factory=platform.python_version)


@dataclass(frozen=True, slots=True)
class RunnerAnswers:
    """Each input's answer (plain JSON values) and the run's measurement."""

    answers: list[dict[str, Any]]
    measurement: Measurement


def clean_environment() -> dict[str, str]:
    """Only what a process needs to start: no PYTHONPATH, no forwardpass settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {k: os.environ[k] for k in keep if k in os.environ}


def launch_command(runner: Path, *args: str) -> list[str]:
    """``python -I`` running ``runner`` with ``forwardpass`` unimportable."""
    return [sys.executable, "-I", "-c", _LAUNCH, str(runner), *args]


#: A small interpreter that starts the measured process and reports on it. Linux carries a
#: process's peak RSS across fork and exec (the forked copy of the parent counts), so the
#: measured process must be the child of something small, not of this (large) process.
_MEASURE = r"""
import json, resource, subprocess, sys, time, urllib.request
command, url, body = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
start = time.perf_counter()
process = subprocess.Popen(command, stdout=subprocess.PIPE if not url else subprocess.DEVNULL,
                           stderr=sys.stderr)
out = b""
if url:
    data = open(body, "rb").read()
    while True:
        try:
            request = urllib.request.Request(url, data=data, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as r:
                out = r.read()
            break
        except OSError:
            if process.poll() is not None or time.perf_counter() - start > 120:
                break
            time.sleep(0.01)
    cold = time.perf_counter() - start
    process.send_signal(2)
else:
    out = process.stdout.readline()
    cold = time.perf_counter() - start
    out += process.stdout.read()
code = process.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"cold": cold, "maxrss": peak, "code": code, "out": out.decode()}))
"""


def measure_process(
    command: list[str],
    cwd: Path,
    url: str = "",
    body: Path | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start ``command`` from a small interpreter; its cold start (to the first stdout line,
    or to the first answer from ``url`` to a POST of ``body`` with ``headers``), peak RSS (MiB,
    the ``RUSAGE_CHILDREN`` ru_maxrss of the measurer) and output."""
    with tempfile.TemporaryFile() as stderr:
        done = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                _MEASURE,
                json.dumps(command),
                url,
                str(body or ""),
                json.dumps(headers or {}),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=clean_environment(),
            cwd=cwd,
            check=False,
        )
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise InternalError(f"measuring {command[0]} failed: {errors.strip()[-800:]}") from None
    report["stderr"] = errors
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    report["peak_rss_mib"] = report["maxrss"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return report


def run_runner(runner: Path, inputs: list[Path], repeat: int) -> RunnerAnswers:
    """Run the bundle's runner on ``inputs`` in a fresh process and measure it."""
    command = launch_command(runner, "--repeat", str(repeat), *map(str, inputs))
    report = measure_process(command, runner.parent)
    if report["code"] != 0 or not report["out"]:
        raise InternalError(
            f"the bundle's runner failed (exit {report['code']}): {report['stderr'].strip()[-800:]}"
        )
    lines = [json.loads(line) for line in report["out"].splitlines() if line.strip()]
    answers = [line for line in lines if "outputs" in line]
    timing = next((line["latency_ms"] for line in lines if "latency_ms" in line), None)
    return RunnerAnswers(
        answers,
        Measurement(
            cold_start_s=round(report["cold"], 4),
            peak_rss_mib=round(report["peak_rss_mib"], 1),
            latency_p50_ms=round(timing["p50"], 4) if timing else None,
            latency_p99_ms=round(timing["p99"], 4) if timing else None,
            latency_count=int(timing["count"]) if timing else 0,
        ),
    )


@dataclass(frozen=True, slots=True)
class Manifest:
    """The bundle's description, written as ``manifest.json``."""

    model: str
    version: int
    target: str
    optimization_style: str
    onnxruntime: str
    files: dict[str, int]
    #: domain → opset → operators the ORT model needs (from the converter's config).
    operators: dict[str, dict[str, list[str]]]
    #: What the target's runtime may lack, and against what it was checked.
    target_check: dict[str, Any]
    #: Processing the runner applies, and what it leaves out (``--raw``).
    processing: dict[str, Any]
    #: Samples the bundle's answers were compared with the engine's on.
    verification: dict[str, Any]
    measured_on_build_machine: Measurement

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
