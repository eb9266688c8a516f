"""The request log: one row per request, written off the hot path, read back by id and time.

:class:`RequestLog` is the sink the monitor hub feeds; it turns each :class:`Record` into a
:class:`LogRow` (metadata always; the full inputs and outputs for a sampled fraction) and hands
the rows to a :class:`LogStore`. :class:`SqliteStore` is the store: SQLite in WAL mode, one
transaction per hub drain (every 0.25 s under traffic), so a killed process loses at most the
rows of the last drain — under the second the issue allows. Retention runs at most every
``retention_every_s``: rows older than ``max_age_s`` go, then the oldest rows until the live
pages fit in ``max_bytes`` (auto_vacuum=INCREMENTAL gives freed pages back to the file system).

Beside the ``requests`` table, an ``events`` table holds what the monitors report over time
(a drift alarm turning on or off, with the features that fired): :class:`EventRow`,
:meth:`SqliteStore.append_events`, :func:`read_events`. Requests answered from the response
cache are rows too (``cached`` is 1, the outputs are the cached ones).

Readers (``forwardpass log``, ``GET /v2/models/M/log``, the feedback join) open their own
connections: WAL lets them read while the writer writes.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson

from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.monitor.hub import Record

__all__ = [
    "EventRow",
    "LogRow",
    "LogStore",
    "RequestLog",
    "SqliteStore",
    "parse_since",
    "payload_document",
    "read_events",
    "read_rows",
]

log = logging.getLogger("forwardpass.monitor")

_COLUMNS = (
    "id", "time", "model", "version", "status", "error", "total_us", "queue_us", "compute_us",
    "preprocess_us", "postprocess_us", "batch_size", "payload", "truth", "cached",
)  # fmt: skip
_EVENT_COLUMNS = ("time", "model", "version", "kind", "detail")


class LogRow(NamedTuple):
    """One request's row, its fields in the table's column order (a tuple: it goes to
    ``executemany`` as it is)."""

    id: str
    time: float
    model: str
    version: str
    status: str
    error: str
    total_us: float
    queue_us: float
    compute_us: float
    preprocess_us: float
    postprocess_us: float
    batch_size: int
    #: JSON text of the inputs and outputs (sampled requests only).
    payload: str | None = None
    #: JSON text of the ground truth, once feedback arrived.
    truth: str | None = None
    #: 1 when the response cache answered the request (None: a log from before the column).
    cached: int | None = 0

    def document(self) -> dict[str, Any]:
        """The row as JSON-ready values (payload and truth parsed)."""
        d: dict[str, Any] = dict(zip(_COLUMNS, self, strict=True))
        for key in ("payload", "truth"):
            if d[key] is not None:
                d[key] = orjson.loads(d[key])
        d["cached"] = bool(d["cached"])
        return d


class EventRow(NamedTuple):
    """Something a monitor reported about a model at a time (``kind``: ``drift_alarm``,
    ``drift_clear``), with its details as JSON text."""

    time: float
    model: str
    version: str
    kind: str
    detail: str

    def document(self) -> dict[str, Any]:
        d = dict(zip(_EVENT_COLUMNS, self, strict=True))
        d["detail"] = orjson.loads(self.detail)
        return d


class LogStore(Protocol):
    """Where request-log rows go. Writes come from one thread (the hub's)."""

    def append(self, rows: list[LogRow]) -> None: ...

    def set_truth(self, truths: Mapping[str, Any]) -> None: ...

    def append_events(self, events: list[EventRow]) -> None: ...

    def query(self, model: str, since: float | None = None, limit: int = 100) -> list[LogRow]: ...

    def close(self) -> None: ...


def _tensor_json(array: np.ndarray) -> dict[str, Any]:
    if array.dtype == np.object_ or array.dtype.kind == "S":
        data: Any = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    else:
        data = array.reshape(-1).tolist()
    return {"datatype": str(array.dtype), "shape": list(array.shape), "data": data}


def payload_document(record: Record) -> dict[str, Any]:
    """A record's inputs and outputs, flattened as the V2 JSON does (data in row-major order)."""
    return {
        "inputs": {n: _tensor_json(a) for n, a in record.inputs.items()},
        "outputs": {n: _tensor_json(a) for n, a in record.outputs.items()},
        "parameters": {k: v for k, v in record.parameters.items() if _plain(v)},
    }


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


class SqliteStore:
    """SQLite in WAL mode, with size and age retention."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 1 << 30,
        max_age_s: float = 7 * 24 * 3600.0,
        retention_every_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.retention_every_s = retention_every_s
        self._last_retention = 0.0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The writer's connection is opened on one thread and used on the hub's.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._setup()
        except (OSError, sqlite3.Error) as exc:
            raise InvalidArgument(f"request log {self.path}: cannot open it: {exc}") from None

    def _setup(self) -> None:
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise InvalidArgument(f"request log {self.path}: cannot use WAL mode (got {mode})")
        # NORMAL: a commit is in the WAL file when it returns; a killed process loses nothing
        # committed (a power cut may lose the last commits, which the issue accepts).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # 16 MiB of page cache (2 by default): the indexes' pages stay in memory while rows
        # are appended (a third less CPU per row at a few thousand rows a second).
        self._db.execute("PRAGMA cache_size=-16384")
        # The schema is made (or upgraded) in one write transaction: the workers of
        # ``serve --workers N`` open the same log at once, and two that both saw an old table
        # would both add its new column (the second failing with "duplicate column").
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._schema()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _schema(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id TEXT, time REAL, model TEXT, version TEXT,"
            " status TEXT, error TEXT, total_us REAL, queue_us REAL, compute_us REAL,"
            " preprocess_us REAL, postprocess_us REAL, batch_size INTEGER, payload TEXT,"
            " truth TEXT, cached INTEGER DEFAULT 0)"
        )
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(requests)")}
        if "cached" not in columns:  # a log written before the column existed
            self._db.execute("ALTER TABLE requests ADD COLUMN cached INTEGER DEFAULT 0")
        self._db.execute("CREATE INDEX IF NOT EXISTS requests_model_time ON requests(model, time)")
        # The index by id serves the ground-truth join alone; it is built at the first
        # feedback (:meth:`set_truth`), so a log that gets none does not pay for it on
        # every row (half the cost of an insert).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (time REAL, model TEXT, version TEXT, kind TEXT,"
            " detail TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS events_model_time ON events(model, time)")

    def append(self, rows: list[LogRow]) -> None:
        if not rows:
            return
        with self._lock:
            self._insert("requests", _COLUMNS, rows)
            now = time.monotonic()
            if now - self._last_retention >= self.retention_every_s:
                self._last_retention = now
                self._retain()

    def append_events(self, events: list[EventRow]) -> None:
        if events:
            with self._lock:
                self._insert("events", _EVENT_COLUMNS, events)

    def _insert(self, table: str, columns: tuple[str, ...], rows: Iterable[Any]) -> None:
        """One transaction of rows (tuples in ``columns`` order); lock held."""
        self._db.execute("BEGIN")
        self._db.executemany(
            f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})",
            rows,
        )
        self._db.execute("COMMIT")

    def retain(self) -> None:
        """Apply the age and size limits now."""
        with self._lock:
            self._retain()

    def _retain(self) -> None:
        db = self._db
        db.execute("DELETE FROM requests WHERE time < ?", (time.time() - self.max_age_s,))
        db.execute("DELETE FROM events WHERE time < ?", (time.time() - self.max_age_s,))
        page = db.execute("PRAGMA page_size").fetchone()[0]
        for _ in range(64):
            used = (
                db.execute("PRAGMA page_count").fetchone()[0]
                - db.execute("PRAGMA freelist_count").fetchone()[0]
            ) * page
            if used <= self.max_bytes:
                break
            total = db.execute("SELECT count(*) FROM requests").fetchone()[0]
            if not total:
                break
            # The oldest tenth at a time: the size is measured in pages, not rows.
            cut = max(1, total // 10)
            db.execute(
                "DELETE FROM requests WHERE rowid IN "
                "(SELECT rowid FROM requests ORDER BY time LIMIT ?)",
                (cut,),
            )
        db.execute("PRAGMA incremental_vacuum")

    def set_truth(self, truths: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("CREATE INDEX IF NOT EXISTS requests_id ON requests(id)")
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE requests SET truth = ? WHERE id = ?",
                [(orjson.dumps(v).decode(), k) for k, v in truths.items()],
            )
            self._db.execute("COMMIT")

    def query(self, model: str, since: float | None = None, limit: int = 100) -> list[LogRow]:
        return read_rows(self.path, model, since, limit)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect(path: Path | str) -> tuple[Path, sqlite3.Connection]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"request log {path} does not exist")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.execute("PRAGMA busy_timeout=5000")
    return path, db


def _newest(
    path: Path | str,
    table: str,
    columns: tuple[str, ...],
    model: str,
    since: float | None,
    limit: int,
) -> list[tuple[Any, ...]]:
    """The newest ``limit`` rows of ``table`` for ``model`` at or after ``since``, oldest
    first. Opens the file read-only: a reader never writes or creates a log."""
    path, db = _connect(path)
    try:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if not have and table == "events":
            return []  # a log from before events were kept
        # A column the file predates reads as NULL (the writer adds it when it opens).
        select = ",".join(c if c in have else f"NULL AS {c}" for c in columns)
        rows = db.execute(
            f"SELECT {select} FROM {table} WHERE model = ? AND time >= ? "
            "ORDER BY time DESC, rowid DESC LIMIT ?",
            (model, since if since is not None else float("-inf"), limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise InvalidArgument(f"cannot read request log {path}: {exc}") from None
    finally:
        db.close()
    return list(reversed(rows))


def read_rows(
    path: Path | str, model: str, since: float | None = None, limit: int = 100
) -> list[LogRow]:
    """The newest ``limit`` request rows of ``model`` at or after ``since`` (Unix seconds),
    oldest first."""
    rows = _newest(path, "requests", _COLUMNS, model, since, limit)
    return [LogRow(*r) for r in rows]


def read_events(
    path: Path | str, model: str, since: float | None = None, limit: int = 100
) -> list[EventRow]:
    """The newest ``limit`` monitor events of ``model`` at or after ``since``, oldest first."""
    return [EventRow(*r) for r in _newest(path, "events", _EVENT_COLUMNS, model, since, limit)]


class RequestLog:
    """The sink that writes the request log: metadata of every record, the payload of a
    ``sample`` fraction (a per-model fraction in ``samples`` wins)."""

    name = "request_log"

    def __init__(
        self,
        store: LogStore,
        sample: float = 0.01,
        samples: Mapping[str, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.sample = sample
        self.samples = dict(samples or {})
        self._random = random.Random(seed)

    def observe(self, records: list[Record]) -> None:
        self.store.append(self.rows(records))

    def rows(self, records: list[Record]) -> list[LogRow]:
        """The rows of one model's records (the hub hands them over by model): one tuple
        each, the payload JSON only for the sampled ones."""
        if not records:
            return []
        fraction = self.samples.get(records[0].model, self.sample)
        draw = self._random.random
        out: list[LogRow] = []
        append = out.append
        for r in records:
            s = r.stages
            payload = None
            if fraction > 0 and draw() < fraction:
                payload = orjson.dumps(payload_document(r)).decode()
            append(
                LogRow(
                    r.id,
                    r.time,
                    r.model,
                    r.version,
                    r.status,
                    r.error,
                    r.total_ns / 1e3,
                    s.queue_ns / 1e3,
                    s.compute_ns / 1e3,
                    s.preprocess_ns / 1e3,
                    s.postprocess_ns / 1e3,
                    s.batch_size,
                    payload,
                    None,
                    int(r.cached),
                )
            )
        return out

    def close(self) -> None:
        self.store.close()


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` / ``?since=``: a duration back from now (``30s``, ``15m``, ``2h``, ``7d``),
    an ISO 8601 time (``2026-12-01T12:00:00``, UTC unless it names an offset) or Unix seconds.
    """
    import datetime

    now = time.time() if now is None else now
    raw = text.strip()
    if raw and raw[-1] in _UNITS:
        try:
            amount = float(raw[:-1])
        except ValueError:
            amount = -1.0
        if amount >= 0:
            return now - amount * _UNITS[raw[-1]]
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidArgument(
            f"since {text!r} is neither a duration (30s, 15m, 2h, 7d), an ISO 8601 time "
            "nor Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
