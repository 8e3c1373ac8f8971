"""Deletions missed in a watch gap: which sessions the periodic list says are gone, and
that forgetting one stops its loop (the cluster test: tests/operator/test_operations.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from kernelsession.operator.resync import vanished
from kernelsession.operator.state import Sessions


def body(name: str, uid: str, rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "labs", "uid": uid, "resourceVersion": rv}}


def test_vanished_are_the_known_sessions_missing_from_the_list() -> None:
    known = [("labs", "a"), ("labs", "b"), ("other", "a")]
    assert vanished(known, [("labs", "a")]) == [("labs", "b"), ("other", "a")]
    assert vanished(known, known) == []
    assert vanished([], [("labs", "new")]) == []  # listed but unknown: the watch brings it


def test_a_namespace_whose_list_was_refused_is_not_judged() -> None:
    known = [("labs", "a"), ("lab-carol", "x")]
    assert vanished(known, [], answered=["labs"]) == [("labs", "a")]
    assert vanished(known, [("labs", "a")], answered=["labs", "lab-carol"]) == [("lab-carol", "x")]


async def test_forgetting_stops_the_loop_and_only_for_the_same_uid() -> None:
    sessions = Sessions()
    state = sessions.remember(("labs", "a"), body("a", "u1"))
    state.task = asyncio.create_task(asyncio.sleep(60))
    sessions.pop(("labs", "a"), "other-uid")  # a DELETED of an earlier session: kept
    assert sessions.get(("labs", "a")) is state
    sessions.pop(("labs", "a"), "u1")
    await asyncio.sleep(0)
    assert sessions.get(("labs", "a")) is None
    assert state.task is None


async def test_a_session_recreated_under_the_same_name_starts_afresh() -> None:
    sessions = Sessions()
    old = sessions.remember(("labs", "a"), body("a", "u1", "5"))
    old.task = asyncio.create_task(asyncio.sleep(60))
    old.warned = True
    new = sessions.remember(("labs", "a"), body("a", "u2", "9"))
    assert new is not old
    assert not new.warned
    assert old.task is None
