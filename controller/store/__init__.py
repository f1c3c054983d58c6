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

The package splits along those jobs: `records` (the record as a value), `_rows` (a record as
a table row), `schema` (tables and migrations), `controls` (the saved operator controls) and
`decision_store` (the connection, recording, retention, queries); callers import from here.
"""

from controller.store.controls import SavedControls
from controller.store.decision_store import DecisionStore
from controller.store.records import DecisionRecord, encode_observation
from controller.store.schema import MIGRATIONS as _MIGRATIONS
from controller.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "_MIGRATIONS",
    "DecisionRecord",
    "DecisionStore",
    "SavedControls",
    "encode_observation",
]
