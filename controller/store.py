"""Audit log of every decision the controller makes and every operator action, in SQLite.

Each tick of each route leaves one row: what was observed, what the policy asked for, what the
guard allowed, what was written, by whom and why — so an operator can answer "why did v2 get
40 points at 03:12?" after the fact, and a test can prove that only the leader ever wrote.
Each operator action (pin, release, pause, resume, shadow) leaves a row too, naming the caller,
and the operator controls in force are kept in the ``controls`` table (`SavedControls`), so a
restart with the same file restores them.
SQLite from the standard library in WAL mode: one file that the API reads while the loop
writes, nothing to operate, and it survives restarts. Retention is bounded by rows and age.

One connection behind a lock serves every thread (the scheduler thread records, API threads
read); that also makes ``":memory:"`` work, which exists only per connection.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from meshcore import ConfigError, Observation, RouteRef, SubsetStats, TemporaryError

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``; bump it and add a step to `_MIGRATIONS` on any change."""

_MIGRATIONS: dict[int, str] = {
    # version reached -> script that takes the previous version there
    1: """
        CREATE TABLE decisions (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
            ts_s        REAL    NOT NULL,
            route       TEXT    NOT NULL,
            phase       TEXT    NOT NULL,
            reason      TEXT    NOT NULL,
            outcome     TEXT    NOT NULL,
            observation TEXT,                               -- JSON object, NaN as null
            raw_action  TEXT,                               -- JSON array, NaN as null
            proposed    TEXT,                               -- JSON object {subset: points}
            written     TEXT,                               -- JSON object {subset: points}
            wrote       INTEGER NOT NULL,
            reward      REAL,
            policy      TEXT    NOT NULL,
            writer      TEXT    NOT NULL
        );
        CREATE INDEX decisions_by_route ON decisions (route, id);
        CREATE INDEX decisions_by_time ON decisions (ts_s);
    """,
    2: """
        ALTER TABLE decisions ADD COLUMN caller TEXT;   -- an operator action's caller, else NULL
        ALTER TABLE decisions ADD COLUMN action TEXT;   -- pin, release, pause, resume, shadow
        ALTER TABLE decisions ADD COLUMN detail TEXT;   -- JSON object: arguments, before, after
        CREATE INDEX decisions_by_operators ON decisions (id) WHERE caller IS NOT NULL;
        CREATE TABLE controls (
            route          TEXT PRIMARY KEY,
            paused         INTEGER NOT NULL,
            shadow         INTEGER NOT NULL,
            pin            TEXT,                         -- JSON object {subset: points}
            pin_expires_at REAL,                         -- Unix time (s)
            caller         TEXT    NOT NULL,
            updated_at     REAL    NOT NULL              -- Unix time (s)
        );
    """,
}

_COLUMNS = (
    "id, ts_s, route, phase, reason, outcome, observation, raw_action, proposed, written, "
    "wrote, reward, policy, writer, caller, action, detail"
)


def _json_safe(value: Any) -> Any:
    """A copy of `value` that strict JSON accepts: non-finite floats become None (null)."""
    kind = type(value)  # exact types first: this runs for every decision of every tick
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if kind is dict:
        return {str(k): _json_safe(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def encode_observation(obs: Observation) -> dict[str, Any]:
    """An `Observation` as the JSON object stored with a decision (NaN where no data -> null)."""
    return {
        "route": obs.route.key,
        "timestamp_s": _json_safe(obs.timestamp_s),
        "staleness_s": _json_safe(obs.staleness_s),
        "subsets": [
            {"name": name, **{f: _json_safe(getattr(stats, f)) for f in _STATS_FIELDS}}
            for name, stats in zip(obs.subsets, obs.stats, strict=True)
        ],
        "capacity_hint_rps": _json_safe(obs.capacity_hint_rps),
        "slo_ms": _json_safe(obs.slo_ms),
    }


_STATS_FIELDS = tuple(f.name for f in fields(SubsetStats))


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """One decision for one route in one tick, as stored and as served by the API.

    id: assigned by the store (leave None when recording); ts_s: the loop's clock when it
    decided (s); route: `RouteRef.key`; phase: the guard's phase; reason: the guard's text;
    outcome: what happened at the actuator ("written", "conflict-retried" (written after a
    conflict and a fresh read), "unchanged", "held", "shadow", "follower" (decided, not the
    leader), "error: ..." (temporary, the route holds), "failed: ..." (permanent, the route is
    not managed until it recovers)); observation: `encode_observation` of what was seen;
    raw_action: the policy's raw action vector; proposed: the policy's split in points;
    written: the guarded split that was (or, in shadow, would have been) written; wrote: whether
    the actuator was called; reward: the reward of the previous action, None if unknown;
    policy: policy name; writer: identity of the writing replica (pod name), for leader checks;
    caller: who took an operator action (``token``, a Kubernetes user, ``meshpilot`` for
    controls restored at start), None for the controller's own decisions; action: the
    operator action (``pin``, ``release``, ``pause``, ``resume``, ``shadow``, ``restore``);
    detail: its arguments and the controls before and after. An operator action's reason is
    the one the operator gave ("" when none) and its outcome ``operator: <action>``.

    Non-finite floats are stored as null: the observation reads back with None there, the
    raw action with NaN, and a NaN reward reads back as None (it is normalized on creation so
    a record equals its read-back copy).
    """

    id: int | None = None
    ts_s: float
    route: str
    phase: str
    reason: str
    outcome: str
    observation: dict[str, Any] | None = None
    raw_action: list[float] | None = None
    proposed: dict[str, int] | None = None
    written: dict[str, int] | None = None
    wrote: bool = False
    reward: float | None = None
    policy: str = ""
    writer: str = ""
    caller: str | None = None
    action: str | None = None
    detail: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.ts_s):
            raise ValueError(f"decision ts_s must be a finite time in s, got {self.ts_s}")
        if not self.route:
            raise ValueError("decision route must be a route key, got an empty string")
        fixed: dict[str, Any] = {
            "wrote": bool(self.wrote),
            "observation": None if self.observation is None else _json_safe(self.observation),
            "raw_action": None if self.raw_action is None else [float(x) for x in self.raw_action],
            "proposed": None if self.proposed is None else dict(self.proposed),
            "written": None if self.written is None else dict(self.written),
            "detail": None if self.detail is None else _json_safe(self.detail),
            "reward": (
                float(self.reward)
                if self.reward is not None and math.isfinite(self.reward)
                else None
            ),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (NaN in the raw action becomes null)."""
        result: dict[str, Any] = _json_safe(asdict(self))
        return result


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(_json_safe(value), allow_nan=False, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _from_row(row: Sequence[Any]) -> DecisionRecord:
    id_, ts_s, route, phase, reason, outcome, obs, raw, proposed, written, *rest = row
    wrote, reward, policy, writer, caller, action, detail = rest
    raw_action = _load(raw)
    if raw_action is not None:
        raw_action = [math.nan if x is None else x for x in raw_action]
    return DecisionRecord(
        id=id_,
        ts_s=ts_s,
        route=route,
        phase=phase,
        reason=reason,
        outcome=outcome,
        observation=_load(obs),
        raw_action=raw_action,
        proposed=_load(proposed),
        written=_load(written),
        wrote=bool(wrote),
        reward=reward,
        policy=policy,
        writer=writer,
        caller=caller,
        action=action,
        detail=_load(detail),
    )


@dataclass(frozen=True)
class SavedControls:
    """The operator controls of one route as kept across restarts: paused, shadow, and the
    pin (points by subset) with when it expires (Unix time, s: a simulated loop clock starts
    again at 0); caller and updated_at (Unix time, s) say who set them last and when."""

    route: str
    paused: bool = False
    shadow: bool = False
    pin: dict[str, int] | None = None
    pin_expires_at: float | None = None
    caller: str = ""
    updated_at: float = 0.0


def _route_key(route: RouteRef | str) -> str:
    return route.key if isinstance(route, RouteRef) else route


class DecisionStore:
    """Append-only decision log with bounded retention; thread-safe; a context manager.

    path: SQLite file (created if missing) or ``":memory:"``. Retention, applied by `prune`
    and automatically every `prune_every` records (0 turns that off), using the newest
    record's ``ts_s`` as "now" so the loop's clock, not the wall clock, decides age:
    max_rows: keep at most this many rows (default 100 000, ~100 MB at ~1 KB a decision);
    max_age_s: drop rows older than this (s, default 7 days). None disables a limit.

    Errors: a file that is not a meshpilot store, or was written by a newer schema, raises
    `ConfigError`; a locked or full database raises `TemporaryError` (the loop holds).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        max_rows: int | None = 100_000,
        max_age_s: float | None = 7 * 24 * 3600.0,
        prune_every: int = 500,
    ) -> None:
        if max_rows is not None and max_rows < 0:
            raise ConfigError(f"decision store max_rows must be >= 0, got {max_rows}")
        if max_age_s is not None and not (math.isfinite(max_age_s) and max_age_s >= 0):
            raise ConfigError(
                f"decision store max_age_s must be finite and >= 0 s, got {max_age_s}"
            )
        if prune_every < 0:
            raise ConfigError(f"decision store prune_every must be >= 0, got {prune_every}")
        self.path = os.fspath(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.prune_every = prune_every
        self._lock = threading.Lock()
        self._since_prune = 0
        try:
            # Autocommit (isolation_level=None): transactions are explicit below.
            conn = sqlite3.connect(
                self.path, timeout=5.0, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"decision store {self.path}: cannot open: {exc}") from exc
        try:
            self._open_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(
                f"decision store {self.path}: not a usable SQLite file: {exc}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _open_schema(self, conn: sqlite3.Connection) -> None:
        version = self._user_version(conn)
        self._check_version(conn, version)
        if version == 0:
            # Only effective before the first table exists; lets pruning give space back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL loses at most the last commits on power loss, never corrupts.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # two replicas opening a new file: one creates it
        try:
            version = self._user_version(conn)
            self._check_version(conn, version)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _user_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, conn: sqlite3.Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"decision store {self.path} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this meshpilot understands; upgrade meshpilot or point "
                "the store at another file"
            )
        if version == 0:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if tables:
                names = sorted(str(t[0]) for t in tables)
                raise ConfigError(
                    f"decision store {self.path} is a SQLite file with tables {names} but no "
                    "meshpilot schema version; refusing to write into it"
                )

    # -- writing -----------------------------------------------------------------------------

    def record(self, rec: DecisionRecord, *, controls: SavedControls | None = None) -> int:
        """Append `rec` and return its new id; may prune old rows (see the class docstring).
        With `controls`, also keep them as the route's saved controls, in one transaction:
        an operator action is either recorded and kept, or neither."""
        if rec.id is not None:
            raise ValueError(f"decision already has id {rec.id}; the store assigns ids")
        row = (
            rec.ts_s,
            rec.route,
            rec.phase,
            rec.reason,
            rec.outcome,
            _dump(rec.observation),
            _dump(rec.raw_action),
            _dump(rec.proposed),
            _dump(rec.written),
            int(rec.wrote),
            rec.reward,
            rec.policy,
            rec.writer,
            rec.caller,
            rec.action,
            _dump(rec.detail),
        )
        with self._lock:
            try:
                cursor = self._insert(row, controls)
                self._since_prune += 1
                if self.prune_every and self._since_prune >= self.prune_every:
                    self._prune(max_rows=self.max_rows, max_age_s=self.max_age_s, now_s=rec.ts_s)
            except sqlite3.OperationalError as exc:
                raise TemporaryError(f"decision store {self.path}: {exc}") from exc
        new_id = cursor.lastrowid
        assert new_id is not None  # an INSERT always sets it
        return new_id

    def _insert(self, row: tuple[Any, ...], controls: SavedControls | None) -> sqlite3.Cursor:
        insert = f"INSERT INTO decisions ({_COLUMNS}) VALUES (NULL{', ?' * len(row)})"
        if controls is None:
            return self._conn.execute(insert, row)
        c = controls
        saved = (c.route, int(c.paused), int(c.shadow), _dump(c.pin), c.pin_expires_at)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._conn.execute(insert, row)
            self._conn.execute(
                "INSERT OR REPLACE INTO controls VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*saved, c.caller, c.updated_at),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return cursor

    def saved_controls(self) -> list[SavedControls]:
        """The operator controls kept for each route (by `record`), in route order."""
        rows = self._query("SELECT * FROM controls ORDER BY route", ())
        return [
            SavedControls(r, bool(paused), bool(shadow), _load(pin), *rest)
            for r, paused, shadow, pin, *rest in rows
        ]

    def prune(
        self, *, max_rows: int | None = None, max_age_s: float | None = None, now_s: float
    ) -> int:
        """Delete rows beyond the newest `max_rows` and rows older than `now_s - max_age_s` (s).

        None disables a limit. Returns how many rows were deleted.
        """
        with self._lock:
            try:
                return self._prune(max_rows=max_rows, max_age_s=max_age_s, now_s=now_s)
            except sqlite3.OperationalError as exc:
                raise TemporaryError(f"decision store {self.path}: {exc}") from exc

    def _prune(self, *, max_rows: int | None, max_age_s: float | None, now_s: float) -> int:
        self._since_prune = 0
        deleted = 0
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if max_age_s is not None:
                cursor = self._conn.execute(
                    "DELETE FROM decisions WHERE ts_s < ?", (now_s - max_age_s,)
                )
                deleted += cursor.rowcount
            if max_rows is not None:
                cursor = self._conn.execute(  # operators' actions only age out
                    "DELETE FROM decisions WHERE caller IS NULL AND id <= "
                    "(SELECT id FROM decisions ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (max_rows,),
                )
                deleted += cursor.rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if deleted:
            self._conn.execute("PRAGMA incremental_vacuum")
        return deleted

    # -- reading -----------------------------------------------------------------------------

    def latest(
        self,
        route: RouteRef | str | None = None,
        limit: int = 50,
        *,
        operators: bool | None = None,
    ) -> list[DecisionRecord]:
        """The newest `limit` decisions, newest first, of one route or of all routes;
        operators: True only operators' actions, False only the controller's decisions."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where: list[str] = []
        params: list[Any] = []
        if route is not None:
            where.append("route = ?")
            params.append(_route_key(route))
        if operators is not None:
            where.append("caller IS NOT NULL" if operators else "caller IS NULL")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM decisions {clause}ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [_from_row(r) for r in rows]

    def get(self, decision_id: int) -> DecisionRecord | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM decisions WHERE id = ?", (decision_id,))
        return _from_row(rows[0]) if rows else None

    def count(self, route: RouteRef | str | None = None) -> int:
        if route is None:
            rows = self._query("SELECT COUNT(*) FROM decisions", ())
        else:
            rows = self._query(
                "SELECT COUNT(*) FROM decisions WHERE route = ?", (_route_key(route),)
            )
        return int(rows[0][0])

    def writers(self, *, since_s: float = -math.inf) -> dict[str, int]:
        """How many writes (``wrote`` true) each writer identity made since `since_s` (s).

        More than one key over a window proves two replicas wrote: leader election failed.
        """
        rows = self._query(
            "SELECT writer, COUNT(*) FROM decisions WHERE wrote = 1 AND ts_s >= ? "
            "GROUP BY writer ORDER BY writer",
            (since_s,),
        )
        return {str(w): int(n) for w, n in rows}

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise TemporaryError(f"decision store {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent); everything recorded is already committed."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DecisionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
