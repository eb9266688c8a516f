"""The request log: WAL mode, sampling, retention, durability across a killed process, and
the hub that feeds it (drops counted, a raising sink disabled for its model only)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.monitor.hub import MonitorHub, Record, Stages
from forwardpass.monitor.requestlog import RequestLog, SqliteStore, parse_since, read_rows


def _record(rid: str, model: str = "m", when: float | None = None) -> Record:
    return Record(
        id=rid,
        time=time.time() if when is None else when,
        model=model,
        version="1",
        status="OK",
        error="",
        total_ns=2_000_000,
        stages=Stages(queue_ns=500_000, compute_ns=1_000_000, batch_size=2),
        inputs={"x": np.arange(4, dtype=np.float32).reshape(2, 2)},
        parameters={"region": "north"},
    )


def test_the_store_is_in_wal_mode_and_rows_read_back(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = RequestLog(SqliteStore(path), sample=1.0, seed=0)
    log.observe([_record("a"), _record("b")])
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = read_rows(path, "m")
    assert [r.id for r in rows] == ["a", "b"]
    doc = rows[0].document()
    assert doc["total_us"] == 2000 and doc["queue_us"] == 500 and doc["batch_size"] == 2
    assert doc["payload"]["inputs"]["x"] == {
        "datatype": "float32",
        "shape": [2, 2],
        "data": [0.0, 1.0, 2.0, 3.0],
    }
    assert doc["payload"]["parameters"] == {"region": "north"}
    assert read_rows(path, "other") == []
    log.close()


def test_payload_sampling_keeps_the_fraction_asked(tmp_path: Path) -> None:
    log = RequestLog(SqliteStore(tmp_path / "log.db"), sample=0.1, samples={"all": 1.0}, seed=1)
    log.observe([_record(str(i)) for i in range(2000)])
    log.observe([_record("x", model="all")])
    rows = read_rows(tmp_path / "log.db", "m", limit=5000)
    sampled = sum(r.payload is not None for r in rows)
    assert len(rows) == 2000 and 140 <= sampled <= 260  # 10 % ± a generous margin
    assert read_rows(tmp_path / "log.db", "all")[0].payload is not None
    log.close()


def test_age_retention(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.db", max_age_s=60)
    log = RequestLog(store, sample=0.0)
    log.observe([_record("old", when=time.time() - 120), _record("new")])
    store.retain()
    assert [r.id for r in read_rows(tmp_path / "log.db", "m")] == ["new"]
    log.close()


def test_size_retention_drops_the_oldest_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = SqliteStore(path, max_bytes=200_000, retention_every_s=1e9)
    log = RequestLog(store, sample=1.0)
    base = time.time() - 1000
    log.observe([_record(f"r{i}", when=base + i) for i in range(3000)])
    before = len(read_rows(path, "m", limit=10_000))
    store.retain()
    after = read_rows(path, "m", limit=10_000)
    assert before == 3000 and 0 < len(after) < before
    assert after[-1].id == "r2999"  # the newest stay
    db = sqlite3.connect(path)
    used = (
        db.execute("PRAGMA page_count").fetchone()[0]
        - db.execute("PRAGMA freelist_count").fetchone()[0]
    ) * db.execute("PRAGMA page_size").fetchone()[0]
    assert used <= 200_000
    log.close()


def test_a_killed_process_loses_at_most_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    child = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_requestlog import _record
        from forwardpass.monitor.hub import MonitorHub
        from forwardpass.monitor.requestlog import RequestLog, SqliteStore
        hub = MonitorHub([RequestLog(SqliteStore({str(path)!r}), sample=0.01)])
        hub.start()
        for i in range(500):
            hub.submit(_record(f"early{{i}}"))
        time.sleep(1.1)  # more than a second: all of these must survive
        for i in range(100):
            hub.submit(_record(f"late{{i}}"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    ids = {r.id for r in read_rows(path, "m", limit=10_000)}
    assert {f"early{i}" for i in range(500)} <= ids


def test_the_hub_counts_drops_and_disables_a_raising_sink_per_model() -> None:
    seen: list[str] = []

    class Picky:
        name = "picky"

        def observe(self, records: list[Record]) -> None:
            if records[0].model == "bad":
                raise RuntimeError("cannot handle this model")
            seen.extend(r.id for r in records)

        def close(self) -> None:
            seen.append("closed")

    hub = MonitorHub([Picky()], max_queue=3, interval_s=0.01)
    for i in range(5):
        hub.submit(_record(f"q{i}"))  # not started: the queue fills at 3
    assert hub.dropped == {("m", "queue_full"): 2}
    hub.start()
    assert hub.flush()
    hub.submit(_record("b1", model="bad"))
    hub.submit(_record("g1"))
    assert hub.flush()
    hub.submit(_record("b2", model="bad"))
    hub.submit(_record("g2"))
    hub.close()
    assert seen == ["q0", "q1", "q2", "g1", "g2", "closed"]
    assert hub.disabled == {("picky", "bad"): "RuntimeError: cannot handle this model"}
    hub.submit(_record("late"))
    assert hub.dropped[("m", "stopped")] == 1


def test_since_forms() -> None:
    assert parse_since("30s", now=1000.0) == 970.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2026-01-01T00:00:00") == parse_since("2026-01-01T00:00:00+00:00")
    with pytest.raises(InvalidArgument, match="neither a duration"):
        parse_since("yesterday")


def test_reading_a_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        read_rows(tmp_path / "none.db", "m")
    assert not (tmp_path / "none.db").exists()


def test_a_log_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="cannot open it"):
        SqliteStore(tmp_path / "file" / "log.db")
    (tmp_path / "notadb").write_text("this is not a database" * 100)
    with pytest.raises(InvalidArgument, match="cannot open it"):
        SqliteStore(tmp_path / "notadb")


def test_two_writers_share_one_log(tmp_path: Path) -> None:
    """``serve --workers N``: every worker's hub writes the same SQLite file. WAL with the
    busy timeout serialises their transactions; no row is lost, none fails."""
    import threading

    from forwardpass.monitor.requestlog import EventRow, LogRow, SqliteStore, read_events

    path = tmp_path / "shared.db"
    stores = [SqliteStore(path), SqliteStore(path)]
    errors: list[BaseException] = []
    now = time.time()  # recent: the age retention keeps every row

    def write(w: int) -> None:
        try:
            for batch in range(40):
                rows = [
                    LogRow(f"w{w}-{batch}-{i}", now + batch, "m", "1", "OK", "", 1.0, 0.0, 0.0,
                           0.0, 0.0, 1)
                    for i in range(25)
                ]  # fmt: skip
                stores[w].append(rows)
                stores[w].append_events([EventRow(now + batch, "m", "1", "drift_alarm", "{}")])
                stores[w].set_truth({f"w{w}-{batch}-0": 1})
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    assert errors == []
    rows = read_rows(path, "m", limit=10_000)
    assert len(rows) == 2 * 40 * 25 and len({r.id for r in rows}) == len(rows)
    assert sum(r.truth is not None for r in rows) == 80
    assert len(read_events(path, "m", limit=1000)) == 80


def test_the_id_index_is_built_at_the_first_feedback(tmp_path: Path) -> None:
    """Appends do not maintain an index by id until ground truth arrives (the only lookup
    by id); then the truth lands on the right row and the index stays."""
    path = tmp_path / "log.db"
    store = SqliteStore(path)
    store.append(RequestLog(store, sample=0.0).rows([_record(f"r{i}") for i in range(50)]))

    def indexes() -> set[str]:
        db = sqlite3.connect(path)
        try:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        finally:
            db.close()

    assert "requests_id" not in indexes()
    store.set_truth({"r7": 1})
    assert "requests_id" in indexes()
    rows = {r.id: r.truth for r in read_rows(path, "m", limit=100)}
    assert rows["r7"] == "1" and rows["r8"] is None
    store.close()


def test_workers_opening_an_old_log_at_once_upgrade_it_once(tmp_path: Path) -> None:
    """``serve --workers N`` opens one log from N processes at once: the schema upgrade of a
    log written before the ``cached`` column is one transaction, not a race to add it."""
    import multiprocessing
    import sqlite3

    for attempt in range(3):
        path = tmp_path / f"requests-{attempt}.db"
        old = sqlite3.connect(path)
        old.execute(
            "CREATE TABLE requests (id TEXT, time REAL, model TEXT, version TEXT, status TEXT,"
            " error TEXT, total_us REAL, queue_us REAL, compute_us REAL, preprocess_us REAL,"
            " postprocess_us REAL, batch_size INTEGER, payload TEXT, truth TEXT)"
        )
        old.commit()
        old.close()
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            errors = pool.map(_open_store, [str(path)] * 4)
        assert errors == [None] * 4
        columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(requests)")]
        assert columns.count("cached") == 1


def _open_store(path: str) -> str | None:
    try:
        SqliteStore(path).close()
    except Exception as exc:  # the test reports what failed, in which process
        return f"{type(exc).__name__}: {exc}"
    return None
