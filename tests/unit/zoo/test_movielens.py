"""``movielens-recommender`` from the zoo: BPR trained at build time, user id in, top-10
unrated films out; it must beat most-popular, and serve exactly what the torch model ranks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from zoo_helpers import Built, with_http_app

from forwardpass.cli.commands import register
from forwardpass.cli.main import cli

NAME = "movielens-recommender"
INFER = f"/v2/models/{NAME}/infer"
USERS = ["1", "196", "405", "943"]

register(cli)


@pytest.fixture(scope="module")
def repo(zoo_build: Callable[[str], Built]) -> Path:
    return zoo_build(NAME)[0]


def request(*user_ids: str) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "user_id",
                "datatype": "BYTES",
                "shape": [len(user_ids), 1],
                "data": list(user_ids),
            }
        ]
    }


def test_training_record_beats_most_popular(repo: Path) -> None:
    training = json.loads((repo / NAME / "TRAINING.json").read_text())
    model, popular = training["heldout"], training["most_popular"]
    assert model["recall@10"] > popular["recall@10"] > 0.02, training
    assert model["ndcg@10"] > popular["ndcg@10"] > 0.02, training
    assert training["split"] == {
        "method": "per user by time: each user's last 10 ratings are the test",
        "train_size": 100_000 - 943 * 10,
        "test_size": 943 * 10,
    }


def test_split_holds_out_each_users_latest_ratings() -> None:
    pytest.importorskip("recbole")
    from forwardpass.zoo.movielens import load_ratings, split

    ratings = load_ratings()
    train, test = split(ratings)
    assert not np.any(train & test) and np.all(train | test)
    for user in (0, 195, 942):
        mine = ratings.users == user
        assert int((test & mine).sum()) == 10
        assert ratings.times[test & mine].min() >= ratings.times[train & mine].max()


def torch_top10(repo: Path, user_ids: list[str]) -> tuple[list[list[str]], np.ndarray]:
    """Retrain (the seed is fixed) and rank with torch, every rated film excluded."""
    from forwardpass.zoo import movielens

    ratings = movielens.load_ratings()
    train, _ = movielens.split(ratings)
    model = movielens.train(ratings, train, movielens.popularity_scores(ratings, train))
    scores = movielens.all_scores(model, len(ratings.user_ids)).astype(np.float64)
    scores[ratings.users, ratings.items] = -np.inf  # every rating, as served
    rows = [ratings.user_ids.index(u) for u in user_ids]
    top = np.argsort(-scores[rows], axis=1, kind="stable")[:, :10]
    titles = [[ratings.titles[i] for i in r] for r in top]
    return titles, np.take_along_axis(scores[rows], top, axis=1)


def test_served_top10_equals_the_torch_models(repo: Path) -> None:
    want_titles, want_scores = torch_top10(repo, USERS)

    async def body(call: Any) -> None:
        meta = orjson.loads((await call("GET", f"/v2/models/{NAME}")).body)
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("user_id", "BYTES")]
        assert {(o["name"], o["datatype"], tuple(o["shape"])) for o in meta["outputs"]} == {
            ("titles", "BYTES", (-1, 10)),
            ("scores", "FP32", (-1, 10)),
        }
        response = await call("POST", INFER, request(*USERS))
        assert response.status == 200, response.body
        outputs = {o["name"]: o for o in orjson.loads(response.body)["outputs"]}
        titles = np.asarray(outputs["titles"]["data"]).reshape(len(USERS), 10)
        scores = np.asarray(outputs["scores"]["data"]).reshape(len(USERS), 10)
        assert titles.tolist() == want_titles
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores, axis=1) <= 0)

    with_http_app(repo, body)


def test_an_unknown_user_is_a_404_naming_the_id(repo: Path) -> None:
    async def body(call: Any) -> None:
        response = await call("POST", INFER, request("196", "99999"))
        assert response.status == 404, response.body
        assert orjson.loads(response.body)["error"] == "input 'user_id': unknown id '99999'"

    with_http_app(repo, body)


def test_fallback_serves_unknown_users_the_most_popular_unrated(repo: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo / NAME, copy / NAME)
    config = (copy / NAME / "config.pbtxt").read_text()
    declaration = '\\"vocabulary\\":\\"users.txt\\"'
    assert declaration in config
    config = config.replace(declaration, declaration + ',\\"fallback\\":\\"<popular>\\"')
    (copy / NAME / "config.pbtxt").write_text(config)
    from forwardpass.zoo import movielens

    ratings = movielens.load_ratings()
    train, _ = movielens.split(ratings)
    counts = np.bincount(ratings.items[train], minlength=len(ratings.item_ids))
    order = np.argsort(-counts, kind="stable")[:10]

    async def body(call: Any) -> None:
        response = await call("POST", INFER, request("no-such-user"))
        assert response.status == 200, response.body
        outputs = {o["name"]: o for o in orjson.loads(response.body)["outputs"]}
        assert outputs["titles"]["data"] == [ratings.titles[i] for i in order]
        assert outputs["scores"]["data"] == [float(counts[i]) for i in order]

    with_http_app(copy, body)


def test_predict_recommends_for_a_user(repo: Path, tmp_path: Path) -> None:
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"user_id": "196"}))
    result = CliRunner().invoke(
        cli, ["predict", NAME, str(user), "--model-repository", str(repo), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)[str(user)]
    assert answer["titles"]["shape"] == [1, 10]
    assert answer["scores"]["shape"] == [1, 10]
    labels = (repo / NAME / "labels.txt").read_text().splitlines()
    assert set(answer["titles"]["data"]) <= set(labels)


def test_without_recbole_add_prints_the_no_deps_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwardpass.errors import Unsupported
    from forwardpass.zoo import add, registry

    monkeypatch.setattr(registry, "missing_modules", lambda recipe: ["recbole"])
    with pytest.raises(Unsupported, match=r"pip install --no-deps recbole==1\.2\.1"):
        add(NAME, tmp_path)
    assert not any(tmp_path.iterdir())
