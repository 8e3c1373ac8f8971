"""What wakes a session's loop (``handlers``): a child's change, but not the watch's
echo of a child this process just created, nor a lab pod event that changes nothing a
pass reads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from test_operator_supervisor import runtime

from kernelsession.operator import act, handlers, naming
from kernelsession.operator.state import SessionState

LABELS = {naming.MANAGED_BY: naming.MANAGER, naming.SESSION_LABEL: "alice"}


def _session() -> tuple[Any, Any, SessionState]:
    rt = runtime(bound=1)
    memo = SimpleNamespace(runtime=rt)
    state = rt.sessions.remember(
        ("labs", "alice"), {"metadata": {"name": "alice", "namespace": "labs"}}
    )
    return rt, memo, state


def _policy(name: str) -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "labels": LABELS}}


async def _child(memo: Any, name: str, event: str) -> None:
    await handlers.child_changed(
        namespace="labs", labels=LABELS, name=name, type=event, body=_policy(name), memo=memo
    )


async def test_the_echo_of_an_own_create_wakes_nobody_and_keeps_it_created() -> None:
    _, memo, state = _session()
    state.note_created("alice-lab")
    await _child(memo, "alice-lab", "ADDED")
    assert not state.wake.is_set()
    # a pass that observed before the echo must still not make it again
    assert state.recently_created("alice-lab", act.CREATE_MEMORY)
    await _child(memo, "alice-lab", "MODIFIED")  # changed by someone after: news
    assert state.wake.is_set()
    assert state.woken_by == "NetworkPolicy"


async def test_a_child_this_process_did_not_create_wakes_its_session() -> None:
    _, memo, state = _session()
    await _child(memo, "alice-lab", "ADDED")  # e.g. made by the previous leader
    assert state.wake.is_set()
    state.wake.clear()
    state.note_created("alice-lab")
    await _child(memo, "alice-lab", "DELETED")  # deleted before it was seen: news
    assert state.wake.is_set()


def _pod(ready: bool) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": "alice-abc", "labels": LABELS},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


async def _pod_event(memo: Any, body: dict[str, Any], event: str) -> None:
    await handlers.pod_changed(
        namespace="labs", labels=LABELS, name="alice-abc", type=event, body=body, memo=memo
    )


async def test_a_lab_pod_wakes_its_session_when_a_pass_would_see_a_change() -> None:
    _, memo, state = _session()
    state.note_created("alice-abc")
    await _pod_event(memo, _pod(ready=False), "ADDED")  # the echo of its create
    assert not state.wake.is_set()
    await _pod_event(memo, _pod(ready=False), "MODIFIED")  # bookkeeping: same view
    assert not state.wake.is_set()
    await _pod_event(memo, _pod(ready=True), "MODIFIED")
    assert state.wake.is_set()
    assert state.woken_by == "Pod"
