"""``serve run forwardpass.ray:app key=value ...``: Ray Serve's own builder call accepts ours
(no cluster needed: binding deployments does not start Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

import forwardpass.ray
from forwardpass.errors import InvalidArgument
from forwardpass.ray.application import build_with_demand

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NULL = """
name: "echo"
backend: "null"
max_batch_size: 4
input [ { name: "a" data_type: TYPE_INT32 dims: [ 2 ] } ]
output [ { name: "b" data_type: TYPE_INT32 dims: [ 2 ] } ]
instance_group [ { count: 3 } ]
"""


def test_serve_run_calls_the_builder_with_its_arguments(tmp_path: Path) -> None:
    (tmp_path / "echo" / "1").mkdir(parents=True)
    (tmp_path / "echo" / "config.pbtxt").write_text(NULL)
    built = call_user_app_builder_with_args_if_necessary(
        forwardpass.ray.app, {"repository": str(tmp_path), "replica_cpus": "0.5"}
    )
    assert isinstance(built, Application)
    _, demand = build_with_demand(
        forwardpass.ray.RayOptions(tmp_path, replica_cpus=0.5, ingress_cpus=0.25)
    )
    assert demand == {"CPU": 3 * 0.5 + 0.25, "GPU": 0.0}


def test_a_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="is not a folder"):
        forwardpass.ray.app(tmp_path / "nope")
