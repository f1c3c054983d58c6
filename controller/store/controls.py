"""Operator controls kept across restarts: `SavedControls` and the controls table (schema v2).

The decision store writes a route's controls in the same transaction as the operator action
that set them, so after a restart the controls in force are the ones the audit log explains.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.store._rows import dump, load

SELECT_CONTROLS = "SELECT * FROM controls ORDER BY route"
"""Every route's saved controls, in route order (rows for `controls_from_rows`)."""


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


def save_controls(conn: sqlite3.Connection, c: SavedControls) -> None:
    """Insert or replace the saved controls of ``c.route`` (inside the caller's transaction)."""
    saved = (c.route, int(c.paused), int(c.shadow), dump(c.pin), c.pin_expires_at)
    conn.execute(
        "INSERT OR REPLACE INTO controls VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*saved, c.caller, c.updated_at),
    )


def controls_from_rows(rows: Sequence[Sequence[Any]]) -> list[SavedControls]:
    """`SavedControls` from rows of `SELECT_CONTROLS`."""
    return [
        SavedControls(r, bool(paused), bool(shadow), load(pin), *rest)
        for r, paused, shadow, pin, *rest in rows
    ]
