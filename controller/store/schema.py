"""The decision store's SQLite schema: its versions, the migrations between them, and opening.

A file is opened in WAL mode and brought to `SCHEMA_VERSION` inside one immediate transaction,
so two replicas opening a new file do not both create it; a file from a newer meshpilot, or a
SQLite file that is not a store, is refused rather than written into.
"""

from __future__ import annotations

import sqlite3

from meshcore import ConfigError

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``; bump it and add a step to `MIGRATIONS` on any change."""

MIGRATIONS: dict[int, str] = {
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

COLUMNS = (
    "id, ts_s, route, phase, reason, outcome, observation, raw_action, proposed, written, "
    "wrote, reward, policy, writer, caller, action, detail"
)
"""The columns of the decisions table in the order `DecisionRecord` rows are read and written."""


def open_schema(conn: sqlite3.Connection, path: str) -> None:
    """Set the connection's pragmas and migrate the file at `path` to `SCHEMA_VERSION`.

    Raises `ConfigError` for a newer schema or a foreign SQLite file, `sqlite3.DatabaseError`
    for a file that is not SQLite.
    """
    version = _user_version(conn)
    _check_version(conn, version, path)
    if version == 0:
        # Only effective before the first table exists; lets pruning give space back.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    # In WAL mode NORMAL loses at most the last commits on power loss, never corrupts.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")  # two replicas opening a new file: one creates it
    try:
        version = _user_version(conn)
        _check_version(conn, version, path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_version(conn: sqlite3.Connection, version: int, path: str) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"decision store {path} has schema version {version}, newer than the "
            f"{SCHEMA_VERSION} this meshpilot understands; upgrade meshpilot or point "
            "the store at another file"
        )
    if version == 0:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if tables:
            names = sorted(str(t[0]) for t in tables)
            raise ConfigError(
                f"decision store {path} is a SQLite file with tables {names} but no "
                "meshpilot schema version; refusing to write into it"
            )
