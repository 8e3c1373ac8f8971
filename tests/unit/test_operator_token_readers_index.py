"""The token-reader RoleBindings the watch shows: a replica that takes over reads who may
read each token from its index instead of granting every session again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from kernelsession.operator import builders, handlers, naming
from kernelsession.operator.decide import _token_readers
from kernelsession.operator.observe import Observation, PolicyView
from kernelsession.operator.policy import Lookups, Policy

BODY: dict[str, Any] = {
    "apiVersion": "kernelsession.dev/v1alpha1",
    "kind": "KernelSession",
    "metadata": {"name": "alice", "namespace": "labs", "uid": "ks-uid"},
    "spec": {"user": "alice"},
}


INDEX = cast(Any, handlers.token_readers)  # the function kopf's decorator registered


def binding(subjects: list[str]) -> dict[str, Any]:
    return builders.token_reader(BODY, subjects)[1]


async def test_the_index_holds_the_users_a_token_reader_binding_names() -> None:
    made = binding(["alice", "oidc:alice"])
    meta = made["metadata"]
    found = await INDEX(namespace="labs", labels=meta["labels"], body=made)
    assert found == {("labs", "alice"): ("alice", "oidc:alice")}


async def test_other_rolebindings_of_a_session_are_not_token_readers() -> None:
    labels = {naming.SESSION_LABEL: "alice", naming.MANAGED_BY: naming.MANAGER}
    body = {"metadata": {"labels": labels}, "subjects": [{"kind": "User", "name": "x"}]}
    assert await INDEX(namespace="labs", labels=labels, body=body) == {}


def test_what_the_binding_grants_already_is_not_granted_again() -> None:
    rules = PolicyView(Policy(), Lookups(frozenset(), {}))
    wanted = ("alice",)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    shown = Observation(body=BODY, now=now, rules=rules, token_readers=wanted)
    assert _token_readers(shown) == []
    unknown = Observation(body=BODY, now=now, rules=rules, token_readers=None)
    assert len(_token_readers(unknown)) == 1
