"""The dashboard in a real browser against a live server with traffic.

One headless Chromium (see ``browser.py``) for the module; one server with a tabular model
monitored for fairness and the embedded digits classifier, and the request log on. The tests
check what the page draws against what the server counted, and keep screenshots under
``tests/artifacts/dashboard/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import screenshot, start_chrome, wait_for
from modelrepo import write_model
from rawhttp import raw_request
from test_monitoring_server import FAIRNESS, _config, _score_onnx

import forwardpass
from drift_models import COLUMNS, reference_rows, write_scored
from forwardpass.monitor.fairness import fairness_report

DIGITS = Path(forwardpass.__file__).parent / "models" / "digits"
TRAFFIC = 24


def _brightness_onnx() -> bytes:
    """pixels FP32 [N, 3, 4, 4] → probabilities FP32 [N, 2] = (1 - mean, mean): "dark", "light"."""
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "axes"], ["light"]),
            helper.make_node("Sub", ["one", "light"], ["dark"]),
            helper.make_node("Concat", ["dark", "light"], ["probabilities"], axis=1),
        ],
        "brightness",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])],
        [one, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _write_brightness(root: Path) -> None:
    """An image model with declared processing: its client input is BYTES (encoded images)."""
    processing = {"inputs": [{"name": "image", "kind": "image", "to": "pixels",
                              "resize": {"size": [4, 4]}}]}  # fmt: skip
    text = json.dumps(json.dumps(processing))
    config = (
        'name: "brightness"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input [{ name: "pixels" data_type: TYPE_FP32 dims: [3, 4, 4] }]\n'
        'output [{ name: "probabilities" data_type: TYPE_FP32 dims: [2] '
        'label_filename: "labels.txt" }]\n'
        f'parameters {{ key: "processing" value {{ string_value: {text} }} }}\n'
    )
    folder = write_model(root, "brightness", config=config, versions={1: _brightness_onnx()})
    (folder / "labels.txt").write_text("dark\nlight\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, start_module_server: Any) -> Any:
    root = tmp_path_factory.mktemp("dashrepo")
    write_model(
        root,
        "scored",
        config=_config("scored", {"fairness": FAIRNESS}),
        versions={1: _score_onnx(), 2: _score_onnx()},
    )
    # Version 2 as `forwardpass optimize` leaves one: its provenance is in optimization.json.
    (root / "scored" / "2" / "optimization.json").write_text(
        json.dumps(
            {
                "optimized_from": 1,
                "method": "int8-static",
                "selection": {"chosen": "int8-static-s8s8-pc"},
                "target": "cpu",
            }
        )
    )
    shutil.copytree(DIGITS, root / "digits")
    _write_brightness(root)
    # A model watched for drift, its reference built as `forwardpass monitor reference` does.
    write_scored(root, "drifty", monitoring={"drift": {"window": 40, "step": 20}})
    data = root.parent / "train.npz"
    np.savez(data, x=reference_rows())
    built = subprocess.run(
        [sys.executable, "-m", "forwardpass", "monitor", "reference", "drifty",
         "--data", str(data), "--model-repository", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    log_path = root.parent / "requests.db"
    return start_module_server(root, "--no-grpc", "--request-log", str(log_path))


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chrome = start_chrome()
    try:
        yield chrome
    finally:
        chrome.quit()


def _post(server: Any, path: str, body: Any) -> Any:
    response = raw_request(server.address, "POST", path, json.dumps(body).encode())
    assert response.status == 200, response.body
    return response.json()


def _scored(server: Any, i: int) -> dict[str, Any]:
    x, sex = (i % 5) / 4, float(i % 2)
    return _post(
        server,
        "/v2/models/scored/infer",
        {
            "id": f"dash-{i}",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [x]},
                {"name": "sex", "datatype": "FP32", "shape": [1, 1], "data": [sex]},
            ],
            "parameters": {"region": "north"},
        },
    )


def _metric(server: Any, name: str, model: str) -> float:
    text = raw_request(server.address, "GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


_SNAPSHOT = """
return [...document.querySelectorAll(arguments[0])].map(
  (e) => arguments[1].map((n) => (n === "text" ? e.innerText : e.getAttribute(n))));
"""


def _attrs(driver: Any, css: str, *names: str) -> list[list[str | None]]:
    """Attributes (``text``: the shown text) of the elements ``css`` selects, read in one
    script run: the page redraws its charts every few seconds, and elements found a moment
    before may be gone."""
    return driver.execute_script(_SNAPSHOT, css, list(names))  # type: ignore[no-any-return]


def _texts(driver: Any, css: str) -> list[str]:
    return [str(row[0]) for row in _attrs(driver, css, "text")]


def _page_errors(driver: Any) -> list[Any]:
    """What the browser logged besides failed requests (which the page shows): script errors
    and content-security-policy refusals."""
    return [e for e in driver.get_log("browser") if e.get("source") != "network"]


def _attr(driver: Any, css: str, name: str) -> list[str]:
    return [str(row[0]) for row in _attrs(driver, css, name)]


def test_models_live_traffic_log_and_fairness(driver: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for i in range(TRAFFIC):
        assert _scored(server, i)["id"] == f"dash-{i}"
    driver.get(server.url + "/#model=scored")
    # Models with state and version; the digits model is listed too.
    wait_for("the models table", lambda: len(_texts(driver, "#models-body tr")) >= 2)
    states = {str(m): str(t) for m, t in _attrs(driver, "#models-body tr", "data-model", "text")}
    assert "READY" in states["scored"] and "READY" in states["digits"]
    # The latest version serves; its provenance is shown.
    assert _attr(driver, '#models-body tr[data-model="scored"]', "data-version") == ["2"]
    assert _texts(driver, '#models-body tr[data-model="scored"] .provenance') == [
        "optimized from v1 by int8-static"
    ]

    # Live: the total is the server's count; the batch bars add up to its executions.
    wait_for("the request total", lambda: _texts(driver, "#live-total") == [str(TRAFFIC)])
    executions = _metric(server, "forwardpass_execution_count_total", "scored")
    assert driver.find_element(By.ID, "live-batches").text == str(int(executions))

    def batch_bars() -> list[int]:
        return [int(float(c)) for c in _attr(driver, "#chart-batch rect.bar", "data-count")]

    wait_for("batch bars", lambda: sum(batch_bars()) == executions)
    assert driver.find_element(By.ID, "live-p50").text.endswith(" ms")

    # More traffic while the page polls: the throughput chart gets points, one above zero.
    for i in range(TRAFFIC, TRAFFIC + 20):
        _scored(server, i)

    def rates() -> list[float]:
        return [float(v) for v in _attr(driver, "#chart-rate circle.point", "data-value")]

    wait_for("a throughput point above zero", lambda: any(r > 0 for r in rates()))
    total = TRAFFIC + 20
    wait_for("the new total", lambda: _texts(driver, "#live-total") == [str(total)])

    # The request log holds every id sent; the id filter narrows it.
    def logged() -> set[str]:
        return set(_attr(driver, "#log-body tr", "data-id"))

    wanted = {f"dash-{i}" for i in range(total)}
    wait_for("every request in the log", lambda: wanted <= logged())
    driver.find_element(By.ID, "log-id").send_keys("dash-3")
    wait_for("the filtered log", lambda: logged() == {"dash-3", *(f"dash-3{i}" for i in range(10))})
    driver.find_element(By.ID, "log-id").clear()
    Select(driver.find_element(By.ID, "log-status")).select_by_value("error")
    wait_for(
        "no failed requests",
        lambda: logged() == set() and "0 of" in driver.find_element(By.ID, "log-status-line").text,
    )
    Select(driver.find_element(By.ID, "log-status")).select_by_value("")

    # Drift is not configured for this model: said so, not thrown.
    wait_for(
        "drift 'not monitored'",
        lambda: driver.find_element(By.ID, "drift-status").text.startswith("not monitored"),
    )
    # Fairness: nothing labelled yet; then feedback, and the groups appear with intervals.
    wait_for(
        "fairness waiting for labels",
        lambda: "no labelled predictions" in driver.find_element(By.ID, "fairness").text,
    )
    screenshot(driver, "traffic")
    truths = [int(i % 3 == 0) for i in range(total)]
    # One truth through the page's form (the log row's id fills it), the rest over HTTP.
    driver.find_element(By.CSS_SELECTOR, '#log-body tr[data-id="dash-0"] td.id button').click()
    driver.find_element(By.ID, "feedback-truth").send_keys(str(truths[0]))
    driver.find_element(By.CSS_SELECTOR, "#feedback-form button").click()
    wait_for("the join", lambda: _texts(driver, "#feedback-status") == ["joined 1 prediction(s)"])
    driver.find_element(By.CSS_SELECTOR, "#feedback-form button").click()  # again: shown, 404
    wait_for("the refusal", lambda: _texts(driver, "#feedback-status")[0].startswith("404:"))
    _post(
        server,
        "/v2/models/scored/feedback",
        [{"id": f"dash-{i}", "truth": t} for i, t in enumerate(truths) if i],
    )
    groups = [f"{i % 2}, north" for i in range(total)]
    preds = [(i % 5) / 4 >= 0.5 for i in range(total)]
    import numpy as np

    expected = fairness_report(
        groups, np.array(truths, bool), np.array(preds, bool), min_group_size=5, bootstrap=0
    )

    def fairness_bars() -> dict[str, float]:
        bars = _attrs(driver, "#fairness-versions rect.bar", "data-group", "data-value")
        return {str(g): float(str(v)) for g, v in bars}

    shown = wait_for("fairness bars", lambda: fairness_bars() or None)
    want = {g["group"]: g["metrics"]["selection_rate"] for g in expected["groups"]}
    assert shown == pytest.approx(want)
    whiskers = _attr(driver, "#fairness-versions line.whisker[data-label]", "data-label")
    assert sorted(whiskers) == sorted(want)
    cells = _texts(driver, "#fairness-versions tbody tr")
    assert len(cells) == len(want) and all("[" in c for c in cells)  # intervals shown
    parity = driver.find_element(
        By.CSS_SELECTOR, '[data-disparity="demographic_parity_difference"]'
    )
    value = expected["disparities"]["demographic_parity_difference"]["value"]
    assert f"{round(value, 3):g}" in parity.text
    # The log shows the truths that arrived.
    wait_for(
        "truths in the log",
        lambda: "1" in _texts(driver, '#log-body tr[data-id="dash-0"] td.truth'),
    )
    screenshot(driver, "fairness")
    assert _page_errors(driver) == []


def test_try_it_with_an_image_and_with_json(driver: Any, server: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(server.url + "/#model=digits")
    wait_for(
        "the digits model selected",
        lambda: (
            Select(driver.find_element(By.ID, "model-select")).first_selected_option.text
            == "digits"
        ),
    )
    wait_for(
        "the input description",
        lambda: "image FP32" in driver.find_element(By.ID, "try-inputs").text,
    )
    driver.find_element(By.ID, "try-file").send_keys(str(DIGITS / "samples" / "digit_3_0.png"))
    driver.find_element(By.ID, "try-send").click()

    def labels() -> list[str]:
        return _attr(driver, "#try-answer ol.classes li", "data-label")

    top = wait_for("the classification", lambda: labels() or None)
    assert len(top) == 5 and top[0] == "3"
    screenshot(driver, "try-image")

    # An image model whose input is BYTES: the file goes as a binary tensor, unchanged.
    from PIL import Image

    Select(driver.find_element(By.ID, "model-select")).select_by_value("brightness")
    wait_for("its input", lambda: "image BYTES" in _texts(driver, "#try-inputs")[0])
    light = tmp_path / "light.png"
    Image.new("RGB", (32, 20), (250, 250, 240)).save(light)
    driver.find_element(By.ID, "try-file").send_keys(str(light))
    driver.find_element(By.ID, "try-send").click()
    answer = wait_for(
        "the brightness classes",
        lambda: _attrs(driver, "#try-answer ol.classes li", "data-label", "data-score"),
    )
    assert [a[0] for a in answer] == ["light", "dark"]
    assert float(str(answer[0][1])) == pytest.approx((250 + 250 + 240) / 3 / 255, abs=1e-3)

    # JSON to the tabular model: the output's values are shown.
    Select(driver.find_element(By.ID, "model-select")).select_by_value("scored")
    driver.find_element(By.CSS_SELECTOR, 'input[name="try-mode"][value="json"]').click()
    text = driver.find_element(By.ID, "try-text")
    text.clear()
    text.send_keys(
        json.dumps(
            {
                "id": "try-json",
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.75]},
                    {"name": "sex", "datatype": "FP32", "shape": [1, 1], "data": [1]},
                ],
            }
        )
    )
    driver.find_element(By.ID, "try-send").click()
    output = wait_for(
        "the JSON answer",
        lambda: _texts(driver, '#try-answer pre.output[data-output="score"]') or None,
    )
    assert json.loads(output[0]) == [0.75]
    assert driver.find_element(By.ID, "try-request-id").text == "try-json"
    # A bad request: the server's error is shown, not thrown.
    text.clear()
    text.send_keys('{"inputs": [{"name": "x"}]}')
    driver.find_element(By.ID, "try-send").click()
    wait_for("the error", lambda: driver.find_element(By.ID, "try-status").text.startswith("400:"))
    screenshot(driver, "try-json")
    assert _page_errors(driver) == []


def test_the_page_asks_for_the_api_key(driver: Any, start_module_server: Any) -> None:
    """With --api-key, inference answers 401 until the page is given the key, which it then
    sends as ``Authorization: Bearer``."""
    from selenium.webdriver.common.by import By

    keyed = start_module_server(None, "--no-grpc", "--api-key", "sekret")  # the digits model
    driver.get(keyed.url + "/#model=digits")
    wait_for("the input description", lambda: "image FP32" in _texts(driver, "#try-inputs")[0])
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    driver.find_element(By.ID, "try-file").send_keys(str(DIGITS / "samples" / "digit_7_0.png"))
    driver.find_element(By.ID, "try-send").click()
    wait_for(
        "the refusal",
        lambda: (
            _texts(driver, "#try-status") == [_texts(driver, "#try-status")[0]]
            and _texts(driver, "#try-status")[0].startswith("401:")
        ),
    )
    assert driver.find_element(By.ID, "key-form").is_displayed()
    driver.find_element(By.ID, "api-key").send_keys("sekret")
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    driver.find_element(By.ID, "try-send").click()
    top = wait_for("the answer", lambda: _attr(driver, "#try-answer ol.classes li", "data-label"))
    assert top[0] == "7"
    screenshot(driver, "api-key")
    driver.execute_script("sessionStorage.clear()")


def _drifty(server: Any, rows: np.ndarray) -> None:
    _post(
        server,
        "/v2/models/drifty/infer",
        {
            "inputs": [
                {
                    "name": c,
                    "shape": [len(rows), 1],
                    "datatype": "FP32",
                    "data": rows[:, j].tolist(),
                }
                for j, c in enumerate(COLUMNS)
            ]
        },
    )


def test_drift_per_feature_over_time_with_alarms(driver: Any, server: Any) -> None:

    rng = np.random.default_rng(0)
    for _ in range(20):
        _drifty(server, rng.normal(size=(2, 3)).astype(np.float32))
    shifted = rng.normal(size=(60, 3)).astype(np.float32)
    shifted[:, 0] += 3.0  # feature "a" moves by three standard deviations
    for start in range(0, 60, 4):
        _drifty(server, shifted[start : start + 4])

    def report() -> Any:
        doc = raw_request(server.address, "GET", "/v2/models/drifty/monitor").json()
        return doc if doc["window"]["rows_seen"] >= 100 else None

    doc = wait_for("the monitor to see the traffic", report)
    alarms = [h["end"] for h in doc["history"] if h["alarm"]]
    assert alarms and not doc["history"][0]["alarm"]
    driver.get(server.url + "/#model=drifty")
    wait_for("the alarm badge", lambda: _texts(driver, "#drift-alarm") == ["ALARM"])

    def marks() -> list[int]:
        return [int(float(x)) for x in _attr(driver, "#chart-drift line.alarm-mark", "data-x")]

    assert wait_for("the alarm marks", marks) == alarms
    # One line per feature, one point per window of the history.
    features = set(doc["history"][-1]["p_value"])
    assert set(_attr(driver, "#chart-drift g[data-series]", "data-series")) == features
    ends = [h["end"] for h in doc["history"]]
    for feature in features:
        css = f'#chart-drift g[data-series="{feature}"] circle.point'
        assert [int(float(x)) for x in _attr(driver, css, "data-x")] == ends
    assert "a" in _attr(driver, "#drift-body tr.drifted", "data-feature")
    screenshot(driver, "drift")
