"""A bundle copied into a virtual environment that has only numpy and onnxruntime (and Pillow,
for pictures) answers like the engine: issue #15's "done when", tested offline.

The environment is a real ``python -m venv --without-pip``; its site-packages gets one
``.pth`` line naming a folder that links only those packages from this interpreter's
installation (no registry is needed, and nothing else can leak in: the test checks that
forwardpass, onnx, tokenizers and torch do not import there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from model_builders import write_model
from test_bundle import (
    DIGIT_SAMPLES,
    EMBEDDED,
    assert_digits_answered_like_the_engine,
    engine_answer,
    tabular_config,
    tabular_model,
)
from test_text_bundle import build_tokenizer, embedding_model, text_config

from forwardpass.datatypes import DataType
from forwardpass.export import TARGETS, ExportOptions, export_bundle
from forwardpass.export.manifest import clean_environment
from forwardpass.export.verification import differences
from forwardpass.types import Tensor

#: What a bundle may need: numpy and onnxruntime, Pillow for pictures (with their libraries).
ALLOWED = ("numpy", "numpy.libs", "onnxruntime", "PIL", "pillow.libs")


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = root / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in ALLOWED:
        if (site / name).exists():
            (deps / name).symlink_to(site / name)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(venv_site) / "bundle-deps.pth").write_text(f"{deps}\n")
    probe = subprocess.run(
        [
            str(python), "-I", "-c",
            "import importlib.util as u, numpy, onnxruntime, PIL.Image\n"
            "print([m for m in ('forwardpass', 'onnx', 'tokenizers', 'torch', 'click')"
            " if u.find_spec(m)])",
        ],
        capture_output=True, text=True, env=clean_environment(), check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", probe.stdout  # only numpy, onnxruntime and Pillow
    return python


def answer_in(python: Path, bundle: Path, *inputs: Path) -> list[dict]:
    done = subprocess.run(
        [str(python), "-I", str(bundle / "runner.py"), *map(str, inputs)],
        capture_output=True, text=True, env=clean_environment(), cwd=bundle.parent, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def copied(bundle: Path, into: Path) -> Path:
    """The bundle as a device gets it: the archive's folder, elsewhere."""
    target = into / "device" / bundle.name
    shutil.copytree(bundle, target)
    return target


def test_the_digits_bundle_answers_like_the_engine_in_a_clean_venv(
    clean_python: Path, tmp_path: Path
) -> None:
    out = tmp_path / "digits-edge"
    export_bundle(ExportOptions("digits", EMBEDDED, target=TARGETS["x86_64"], output=out, repeat=1))
    assert_digits_answered_like_the_engine(
        answer_in(clean_python, copied(out, tmp_path), *DIGIT_SAMPLES[:3])
    )


def test_tabular_and_text_bundles_answer_like_the_engine_in_a_clean_venv(
    clean_python: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    write_model(
        root, "linear", config=tabular_config(), model=tabular_model(),
        files={"labels.txt": "cat\ndog\nbird\n"},
    )  # fmt: skip
    processing = {
        "inputs": [{"name": "text", "kind": "text", "max_length": 12}],
        "outputs": [{"name": "unit", "from": "embedding", "steps": ["l2_normalize"]}],
    }
    write_model(
        root, "embed", config=text_config(processing), model=embedding_model(),
        files={"tokenizer.json": build_tokenizer(True, None, True).to_str()},
    )  # fmt: skip
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
    texts = [["Café déjà vu, the man!"], ["東京 [SEP] street"]]
    cases = {
        "linear": ({"features": rows.tolist()}, [Tensor("features", DataType.FP32, rows)]),
        "embed": ({"text": texts}, [Tensor("text", DataType.BYTES, _texts(texts))]),
    }
    for model, (document, tensors) in cases.items():
        out = tmp_path / f"{model}-edge"
        export_bundle(ExportOptions(model, root, output=out, repeat=1))
        request = tmp_path / f"{model}.json"
        request.write_text(json.dumps(document, ensure_ascii=False))
        (answer,) = answer_in(clean_python, copied(out, tmp_path / model), request)
        want = engine_answer(root, model, tensors)
        assert differences(want, answer["outputs"]) == [], model


def _texts(rows: list[list[str]]) -> np.ndarray:
    array = np.empty((len(rows), 1), dtype=object)
    array[:, 0] = [r[0].encode() for r in rows]
    return array
