"""Build the Dockerfile's image and run ``forwardpass`` in it, where a container builder runs.

Skipped, saying why, when no builder (podman, docker) works on the machine or the base image
cannot be had (no registry reachable and none cached).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/forwardpass-test:latest"


def _builder() -> str | None:
    for name in ("podman", "docker"):
        if shutil.which(name) is None:
            continue
        try:
            probe = subprocess.run([name, "info"], capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        if probe.returncode == 0:
            return name
    return None


def _base_image() -> str:
    match = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def test_the_image_builds_and_runs_forwardpass() -> None:
    builder = _builder()
    if builder is None:
        pytest.skip("no container builder (podman, docker) runs on this machine")
    base = _base_image()
    if subprocess.run([builder, "image", "inspect", base], capture_output=True).returncode:
        pull = subprocess.run([builder, "pull", base], capture_output=True, text=True, timeout=300)
        if pull.returncode:
            reason = (pull.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"{builder} runs but cannot get the base image {base}: {reason}")
    build = subprocess.run(
        [builder, "build", "-t", TAG, str(ROOT)], capture_output=True, text=True, timeout=1800
    )
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        ran = subprocess.run(
            [builder, "run", "--rm", TAG, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "--workers" in ran.stdout and "--model-repository" in ran.stdout
        user = subprocess.run(
            [builder, "run", "--rm", "--entrypoint", "id", TAG, "-u"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert user.returncode == 0 and user.stdout.strip() != "0"
    finally:
        subprocess.run([builder, "rmi", "-f", TAG], capture_output=True, timeout=300)
