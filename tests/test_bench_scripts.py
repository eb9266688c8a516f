"""Every benchmark under bench/ still imports and parses its arguments.

The benchmarks are not run by the suite (their figures come from quiet machines), but a helper
moved between bench/ modules once left one failing at import; ``--help`` catches that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
#: Modules imported by the scripts, not scripts themselves.
HELPERS = {
    "common.py", "models.py", "raw_ort.py", "facenet_reference.py", "baseline_fastapi.py",
    "triton_peer.py",
}  # fmt: skip
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_parses_its_arguments(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
