"""The decision store: one SQLite connection behind a lock, recording, pruning and queries.

One connection serves every thread (the scheduler thread records, API threads read); that also
makes ``":memory:"`` work, which exists only per connection. Retention is bounded by rows and
by age, measured on the loop's clock. The schema lives in `controller.store.schema`, the row
format in `controller.store._rows`, the saved controls in `controller.store.controls`.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from controller.store._rows import from_row, to_row
from controller.store.controls import (
    SELECT_CONTROLS,
    SavedControls,
    controls_from_rows,
    save_controls,
)
from controller.store.records import DecisionRecord
from controller.store.schema import COLUMNS, open_schema
from meshcore import ConfigError, RouteRef, TemporaryError


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
            open_schema(conn, self.path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(
                f"decision store {self.path}: not a usable SQLite file: {exc}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- writing -----------------------------------------------------------------------------

    def record(self, rec: DecisionRecord, *, controls: SavedControls | None = None) -> int:
        """Append `rec` and return its new id; may prune old rows (see the class docstring).
        With `controls`, also keep them as the route's saved controls, in one transaction:
        an operator action is either recorded and kept, or neither."""
        if rec.id is not None:
            raise ValueError(f"decision already has id {rec.id}; the store assigns ids")
        row = to_row(rec)
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
        insert = f"INSERT INTO decisions ({COLUMNS}) VALUES (NULL{', ?' * len(row)})"
        if controls is None:
            return self._conn.execute(insert, row)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._conn.execute(insert, row)
            save_controls(self._conn, controls)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return cursor

    def saved_controls(self) -> list[SavedControls]:
        """The operator controls kept for each route (by `record`), in route order."""
        return controls_from_rows(self._query(SELECT_CONTROLS, ()))

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
            f"SELECT {COLUMNS} FROM decisions {clause}ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [from_row(r) for r in rows]

    def get(self, decision_id: int) -> DecisionRecord | None:
        rows = self._query(f"SELECT {COLUMNS} FROM decisions WHERE id = ?", (decision_id,))
        return from_row(rows[0]) if rows else None

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
