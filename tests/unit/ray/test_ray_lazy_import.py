"""ray is an extra: forwardpass's core, its CLI and even forwardpass.ray import without it."""

from __future__ import annotations

import subprocess
import sys


def test_ray_is_imported_only_when_used() -> None:
    code = (
        "import sys\n"
        "import forwardpass.engine, forwardpass.serving, forwardpass.cli.main, forwardpass.ray\n"
        "import forwardpass.ray.options, forwardpass.ray.router\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
