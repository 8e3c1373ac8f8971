"""The operator's per-session memory: newest-wins body, created children, one-pop forget."""

from __future__ import annotations

from typing import Any

from kernelsession.operator.state import Sessions


def body(rv: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "status": {"phase": phase}}


def test_an_older_event_never_replaces_our_newer_write() -> None:
    sessions = Sessions()
    key = ("labs", "a")
    sessions.remember(key, body("100", "Ready"))
    sessions.remember(key, body("105", "Culled"))  # our own status write
    state = sessions.remember(key, body("101", "Ready"))  # a watch event queued before it
    assert state.body["status"]["phase"] == "Culled"
    sessions.remember(key, body("110", "Ready"))  # a genuinely newer change wins
    assert state.body["status"]["phase"] == "Ready"


def test_a_session_is_remembered_without_managed_fields() -> None:
    sessions = Sessions()
    key = ("labs", "a")
    first = body("100", "Ready")
    first["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    state = sessions.remember(key, first)
    assert "managedFields" not in state.body["metadata"]
    assert state.body["metadata"]["resourceVersion"] == "100"
    assert "managedFields" in first["metadata"]  # the watch's own copy is left as it was
    newer = body("101", "Culled")
    newer["metadata"]["managedFields"] = []
    sessions.remember(key, newer)
    assert state.body["metadata"] == {"resourceVersion": "101"}
    assert state.body["status"]["phase"] == "Culled"


def test_opaque_versions_always_replace() -> None:
    sessions = Sessions()
    key = ("labs", "a")
    sessions.remember(key, body("x", "Ready"))
    state = sessions.remember(key, body("y", "Failed"))
    assert state.body["status"]["phase"] == "Failed"


def test_created_children_are_remembered_until_seen() -> None:
    sessions = Sessions()
    key = ("labs", "a")
    state = sessions.remember(key, body("1", "Pending"))
    assert not state.recently_created("a-lab-1", 60)
    state.note_created("a-lab-1")
    assert state.recently_created("a-lab-1", 60)
    assert not state.recently_created("a-lab-1", 0)  # memory is bounded in time
    state.seen("a-lab-1")
    assert not state.recently_created("a-lab-1", 60)


def test_one_pop_forgets_everything_about_a_session() -> None:
    sessions = Sessions()
    key = ("labs", "a")
    state = sessions.remember(key, body("1", "Pending"))
    state.note_created("a-lab-2")
    state.warned = True
    state.rejected["a-lab-3"] = ("refused", 0.0)
    sessions.pop(key)
    assert sessions.get(key) is None
    fresh = sessions.remember(key, body("2", "Pending"))
    assert not fresh.recently_created("a-lab-2", 60)
    assert not fresh.warned
    assert fresh.rejected == {}


def test_the_echo_of_our_own_status_write_is_no_news() -> None:
    """A status write's answer is remembered; its watch event then wakes no pass."""
    sessions = Sessions()
    key = ("labs", "a")
    assert sessions.is_news(key, body("100", "Pending"))  # a session not known yet
    sessions.remember(key, body("100", "Pending"))
    sessions.remember(key, body("105", "Starting"))  # our write's answer
    assert not sessions.is_news(key, body("105", "Starting"))  # its watch event
    assert not sessions.is_news(key, body("101", "Pending"))  # an event queued before
    assert sessions.is_news(key, body("110", "Starting"))  # someone else's change
    assert sessions.is_news(key, body("x", "Starting"))  # opaque: cannot tell
    other = {"metadata": {"resourceVersion": "90", "uid": "another"}, "status": {}}
    assert sessions.is_news(key, other)  # another session of that name
