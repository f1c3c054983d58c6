"""The decision store: the audit log of every decision.

Covers: a record reads back equal (by id, newest-first listings, per-route filters, counts);
NaN in observations, raw actions and rewards is stored as null, never as invalid JSON; a file
store survives close and reopen, and ids are never reused; retention by rows and by age, by
hand and automatically; many threads recording and reading at once; per-writer write counts;
files it must refuse (newer schema, foreign tables, not SQLite) raise ConfigError.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from controller.store import (
    SCHEMA_VERSION,
    DecisionRecord,
    DecisionStore,
    encode_observation,
)
from meshcore import ConfigError, Observation, RouteRef, SubsetStats

ROUTE = RouteRef("lirmm-services", "checkout", "primary", "checkout")


def observation() -> Observation:
    stats = (
        SubsetStats(rps=120.0, error_ratio=0.01, p99_ms=180.0, weight=90, slow_ratio=0.02),
        SubsetStats(rps=math.nan, error_ratio=math.nan, p99_ms=math.nan, weight=10),
    )
    return Observation(ROUTE, ("v1", "v2"), stats, timestamp_s=100.0, staleness_s=2.5)


def record(ts_s: float = 100.0, route: str = ROUTE.key, **changes: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "ts_s": ts_s,
        "route": route,
        "phase": "active",
        "reason": "step clamped +40->+10 on v2",
        "outcome": "written",
        "observation": encode_observation(observation()),
        "raw_action": [0.25, -0.5],
        "proposed": {"v1": 50, "v2": 50},
        "written": {"v1": 80, "v2": 20},
        "wrote": True,
        "reward": -0.031,
        "policy": "ppo",
        "writer": "meshpilot-0",
    }
    fields.update(changes)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store() -> DecisionStore:
    return DecisionStore(":memory:", prune_every=0)


def test_record_reads_back_equal_with_its_new_id(store: DecisionStore) -> None:
    rec = record()
    new_id = store.record(rec)
    got = store.get(new_id)
    assert got is not None
    assert got.id == new_id
    assert got == DecisionRecord(**{**rec.__dict__, "id": new_id})
    assert store.get(new_id + 1) is None


def test_weights_keep_their_subset_order(store: DecisionStore) -> None:
    new_id = store.record(record(written={"v2": 20, "v1": 80}))
    got = store.get(new_id)
    assert got is not None and got.written is not None
    assert list(got.written) == ["v2", "v1"]


def test_latest_is_newest_first_filtered_by_route_and_limited(store: DecisionStore) -> None:
    other = "lirmm-services/cart/0"
    ids = [
        store.record(record(ts_s=float(i), route=other if i % 2 else ROUTE.key)) for i in range(6)
    ]
    assert [r.id for r in store.latest()] == ids[::-1]
    assert [r.id for r in store.latest(ROUTE)] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in store.latest(other, limit=2)] == [ids[5], ids[3]]
    assert (store.count(), store.count(ROUTE.key), store.count("nope/nope/0")) == (6, 3, 0)
    with pytest.raises(ValueError):
        store.latest(limit=0)


def test_nan_is_stored_as_null_and_reads_back_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    with DecisionStore(path) as store:
        new_id = store.record(record(raw_action=[math.nan, 0.5], reward=math.nan))
    raw = sqlite3.connect(path).execute(
        "SELECT observation, raw_action, reward FROM decisions WHERE id = ?", (new_id,)
    )
    obs_text, action_text, reward = raw.fetchone()
    for text in (obs_text, action_text):
        assert "NaN" not in text
        json.loads(text, parse_constant=pytest.fail)  # strict JSON
    assert reward is None
    with DecisionStore(path) as store:
        got = store.get(new_id)
    assert got is not None and got.observation is not None and got.raw_action is not None
    v2 = got.observation["subsets"][1]
    assert v2 == {
        "name": "v2",
        "rps": None,
        "error_ratio": None,
        "p99_ms": None,
        "weight": 10,
        "slow_ratio": None,
        "recent_p99_ms": None,
        "recent_slow_ratio": None,
        "recent_rps": None,
    }
    assert got.observation["subsets"][0]["p99_ms"] == 180.0
    assert got.observation["slo_ms"] is None and got.observation["window_s"] is None
    assert got.observation["balancer"] == "least_request"
    assert math.isnan(got.raw_action[0]) and got.raw_action[1] == 0.5
    assert got.reward is None
    assert got.to_dict()["raw_action"] == [None, 0.5]
    json.dumps(got.to_dict(), allow_nan=False)


def test_a_file_store_survives_restart_and_never_reuses_ids(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    store = DecisionStore(path)
    first = [store.record(record(ts_s=float(i))) for i in range(3)]
    assert store.prune(max_rows=0, now_s=10.0) == 3
    store.close()
    store.close()  # idempotent
    with DecisionStore(path) as reopened:
        assert reopened.count() == 0
        later = reopened.record(record(ts_s=20.0))
        assert later > max(first)
    with DecisionStore(path) as reopened:
        got = reopened.get(later)
        assert got is not None and got.ts_s == 20.0
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prune_by_rows_keeps_the_newest(store: DecisionStore) -> None:
    ids = [store.record(record(ts_s=float(i))) for i in range(10)]
    assert store.prune(max_rows=4, now_s=10.0) == 6
    assert [r.id for r in store.latest()] == ids[:5:-1]
    assert store.prune(max_rows=4, now_s=10.0) == 0


def test_prune_by_age_drops_rows_older_than_max_age(store: DecisionStore) -> None:
    for ts_s in (0.0, 50.0, 99.0, 100.0, 150.0):
        store.record(record(ts_s=ts_s))
    assert store.prune(max_age_s=100.0, now_s=200.0) == 3
    assert sorted(r.ts_s for r in store.latest()) == [100.0, 150.0]


def test_retention_is_applied_automatically_every_n_records() -> None:
    store = DecisionStore(":memory:", max_rows=5, max_age_s=None, prune_every=3)
    counts = []
    for i in range(9):
        store.record(record(ts_s=float(i)))
        counts.append(store.count())
    assert counts == [1, 2, 3, 4, 5, 5, 6, 7, 5]


def test_automatic_age_retention_uses_the_records_clock() -> None:
    store = DecisionStore(":memory:", max_rows=None, max_age_s=60.0, prune_every=1)
    store.record(record(ts_s=0.0))
    store.record(record(ts_s=30.0))
    store.record(record(ts_s=100.0))
    assert [r.ts_s for r in store.latest()] == [100.0]


def test_concurrent_writers_and_readers_lose_nothing(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "decisions.db", prune_every=0)
    threads_n, per_thread = 8, 40
    ids: list[int] = []
    ids_lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n + 1)

    def write(worker: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                new_id = store.record(record(ts_s=float(i), writer=f"w{worker}"))
                with ids_lock:
                    ids.append(new_id)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                for rec in store.latest(limit=5):
                    assert rec.written == {"v1": 80, "v2": 20}
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads_n)]
    workers.append(threading.Thread(target=read))
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    assert len(set(ids)) == threads_n * per_thread
    assert store.count() == threads_n * per_thread
    assert store.writers() == {f"w{n}": per_thread for n in range(threads_n)}
    store.close()


def test_writers_counts_only_writes_since_a_time(store: DecisionStore) -> None:
    store.record(record(ts_s=1.0, writer="meshpilot-0"))
    store.record(record(ts_s=2.0, writer="meshpilot-1"))
    store.record(record(ts_s=3.0, writer="meshpilot-1", wrote=False, outcome="shadow"))
    store.record(record(ts_s=4.0, writer="meshpilot-1"))
    assert store.writers() == {"meshpilot-0": 1, "meshpilot-1": 2}
    assert store.writers(since_s=2.0) == {"meshpilot-1": 2}


def test_recording_a_record_that_has_an_id_is_refused(store: DecisionStore) -> None:
    new_id = store.record(record())
    got = store.get(new_id)
    assert got is not None
    with pytest.raises(ValueError, match="already has id"):
        store.record(got)


def test_a_newer_schema_version_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    DecisionStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        DecisionStore(path)


def test_a_foreign_sqlite_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="customers"):
        DecisionStore(path)


def test_a_file_that_is_not_sqlite_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(ConfigError, match="not a usable SQLite file"):
        DecisionStore(path)


@pytest.mark.parametrize("kwargs", [{"max_rows": -1}, {"max_age_s": math.nan}, {"prune_every": -1}])
def test_invalid_retention_raises_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        DecisionStore(":memory:", **kwargs)  # type: ignore[arg-type]
