"""The zoo's recommender behind a real ``forwardpass serve``: tritonclient over HTTP and gRPC
ask for a user's top-10 films; both answer the same, and an unknown user is NOT_FOUND."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NAME = "movielens-recommender"


@pytest.fixture(scope="module")
def server(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from forwardpass.zoo import add, get_recipe

    for module in get_recipe(NAME).modules:
        pytest.importorskip(module, reason=f"zoo model {NAME} needs {module}")
    repository = tmp_path_factory.mktemp("movielens") / "models"
    add(NAME, repository)
    return start_module_server(repository, "--log-level", "WARNING")


def users(*ids: str) -> np.ndarray:
    return np.array([[u.encode()] for u in ids], dtype=object)


def test_http_and_grpc_recommend_the_same_films(server: Any) -> None:
    batch = users("1", "196", "943")
    http = httpclient.InferenceServerClient(server.address)
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        h_in = httpclient.InferInput("user_id", list(batch.shape), "BYTES")
        h_in.set_data_from_numpy(batch, binary_data=True)
        h = http.infer(NAME, [h_in])
        g_in = grpcclient.InferInput("user_id", list(batch.shape), "BYTES")
        g_in.set_data_from_numpy(batch)
        g = grpc.infer(NAME, [g_in])
        titles, scores = h.as_numpy("titles"), h.as_numpy("scores")
        assert titles.shape == (3, 10) and scores.shape == (3, 10)
        assert scores.dtype == np.float32 and np.all(np.diff(scores, axis=1) <= 0)
        assert np.array_equal(g.as_numpy("titles"), titles)
        np.testing.assert_array_equal(g.as_numpy("scores"), scores)
        assert all(isinstance(t, bytes) and t for t in titles.reshape(-1))
        # Different users get different lists.
        assert titles[0].tolist() != titles[1].tolist()
    finally:
        http.close()
        grpc.close()


def test_an_unknown_user_is_not_found_on_both_wires(server: Any) -> None:
    batch = users("99999")
    http = httpclient.InferenceServerClient(server.address)
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        h_in = httpclient.InferInput("user_id", [1, 1], "BYTES")
        h_in.set_data_from_numpy(batch)
        with pytest.raises(InferenceServerException, match="unknown id '99999'") as http_error:
            http.infer(NAME, [h_in])
        assert http_error.value.status() == "404"
        g_in = grpcclient.InferInput("user_id", [1, 1], "BYTES")
        g_in.set_data_from_numpy(batch)
        with pytest.raises(InferenceServerException, match="unknown id '99999'") as grpc_error:
            grpc.infer(NAME, [g_in])
        assert grpc_error.value.status() == "StatusCode.NOT_FOUND"
    finally:
        http.close()
        grpc.close()
