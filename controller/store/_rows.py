"""How a `DecisionRecord` maps to a row of the decisions table and back.

JSON columns hold strict JSON (NaN as null); a raw action reads back with NaN where null was
stored, so the observation, the split and the action survive the round trip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from controller.store.records import DecisionRecord, json_safe


def dump(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(json_safe(value), allow_nan=False, separators=(",", ":"))


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_row(rec: DecisionRecord) -> tuple[Any, ...]:
    """The values of every column of `COLUMNS` but ``id``, in order, for an INSERT."""
    return (
        rec.ts_s,
        rec.route,
        rec.phase,
        rec.reason,
        rec.outcome,
        dump(rec.observation),
        dump(rec.raw_action),
        dump(rec.proposed),
        dump(rec.written),
        int(rec.wrote),
        rec.reward,
        rec.policy,
        rec.writer,
        rec.caller,
        rec.action,
        dump(rec.detail),
    )


def from_row(row: Sequence[Any]) -> DecisionRecord:
    id_, ts_s, route, phase, reason, outcome, obs, raw, proposed, written, *rest = row
    wrote, reward, policy, writer, caller, action, detail = rest
    raw_action = load(raw)
    if raw_action is not None:
        raw_action = [math.nan if x is None else x for x in raw_action]
    return DecisionRecord(
        id=id_,
        ts_s=ts_s,
        route=route,
        phase=phase,
        reason=reason,
        outcome=outcome,
        observation=load(obs),
        raw_action=raw_action,
        proposed=load(proposed),
        written=load(written),
        wrote=bool(wrote),
        reward=reward,
        policy=policy,
        writer=writer,
        caller=caller,
        action=action,
        detail=load(detail),
    )
