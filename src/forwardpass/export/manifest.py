"""``manifest.json``: what is in a bundle, and how it behaved on the build machine.

The measurements run the bundle's own runner in a fresh interpreter (``python -I``, a clean
environment, and ``forwardpass`` made unimportable), so they are what a device that has only
numpy and onnxruntime sees: cold start is process start to the first answer line, peak memory
is that process's maximum resident set (``wait4``'s rusage), latency is the runner's own
``--repeat`` timing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forwardpass.errors import InternalError

__all__ = ["Manifest", "Measurement", "RunnerAnswers", "run_runner"]

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


def run_runner(runner: Path, inputs: list[Path], repeat: int) -> RunnerAnswers:
    """Run the bundle's runner on ``inputs`` in a fresh process and measure it."""
    command = launch_command(runner, "--repeat", str(repeat), *map(str, inputs))
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=clean_environment(),
            cwd=runner.parent,
        )
        assert process.stdout is not None
        first = process.stdout.readline()
        cold = time.perf_counter() - start
        rest = process.stdout.read()
        process.stdout.close()
        # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN would be the
        # largest of every child this process ever reaped).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    if process.returncode != 0 or not first:
        raise InternalError(
            f"the bundle's runner failed (exit {process.returncode}): {errors.strip()[-800:]}"
        )
    lines = [json.loads(line) for line in (first + rest).decode().splitlines() if line.strip()]
    answers = [line for line in lines if "outputs" in line]
    timing = next((line["latency_ms"] for line in lines if "latency_ms" in line), None)
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return RunnerAnswers(
        answers,
        Measurement(
            cold_start_s=round(cold, 4),
            peak_rss_mib=round(rss, 1),
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
