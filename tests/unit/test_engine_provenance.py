"""The server shows which versions ``forwardpass optimize`` derived from which."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from model_builders import run_with_engine

from forwardpass.engine import Engine
from forwardpass.protocol.documents import index_document


def test_index_names_the_version_an_optimized_one_came_from(repo: Path) -> None:
    folder = repo / "add"
    shutil.copytree(folder / "1", folder / "2")
    (folder / "config.pbtxt").write_text(
        (folder / "config.pbtxt").read_text() + "\nversion_policy: { all: { } }\n"
    )
    (folder / "2" / "optimization.json").write_text(json.dumps({
        "optimized_from": 1, "method": "int8-dynamic", "target": "cpu",
        "selection": {"chosen": "int8-dynamic-pc"},
    }))  # fmt: skip

    async def body(engine: Engine) -> None:
        rows = {r["version"]: r for r in index_document(engine.index()) if r["name"] == "add"}
        assert "optimized_from" not in rows["1"]
        assert rows["2"]["optimized_from"] == "1"
        assert rows["2"]["optimization"] == "int8-dynamic"

    run_with_engine(repo, body)
