"""The operator's in-memory state: newest-wins session cache, created-children memory."""

from __future__ import annotations

from typing import Any, cast

from kernelsession.operator.config import Settings
from kernelsession.operator.runtime import Runtime


def runtime() -> Runtime:
    # The API clients are never touched by these methods.
    return Runtime(settings=Settings(), kube=cast(Any, None), http=cast(Any, None))


def body(rv: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "status": {"phase": phase}}


def test_an_older_event_never_replaces_our_newer_write() -> None:
    rt = runtime()
    key = ("labs", "a")
    rt.remember(key, body("100", "Ready"))
    rt.remember(key, body("105", "Culled"))  # our own status write
    rt.remember(key, body("101", "Ready"))  # a watch event queued before the write
    assert rt.bodies[key]["status"]["phase"] == "Culled"
    rt.remember(key, body("110", "Ready"))  # a genuinely newer change wins
    assert rt.bodies[key]["status"]["phase"] == "Ready"


def test_opaque_versions_always_replace() -> None:
    rt = runtime()
    key = ("labs", "a")
    rt.remember(key, body("x", "Ready"))
    rt.remember(key, body("y", "Failed"))
    assert rt.bodies[key]["status"]["phase"] == "Failed"


def test_created_children_are_remembered_until_seen() -> None:
    rt = runtime()
    key = ("labs", "a")
    assert not rt.recently_created(key, "a-lab-1", 60)
    rt.note_created(key, "a-lab-1")
    assert rt.recently_created(key, "a-lab-1", 60)
    assert not rt.recently_created(key, "a-lab-1", 0)  # memory is bounded in time
    rt.seen(key, "a-lab-1")
    assert not rt.recently_created(key, "a-lab-1", 60)
    rt.note_created(key, "a-lab-2")
    rt.forget(key)
    assert not rt.recently_created(key, "a-lab-2", 60)
