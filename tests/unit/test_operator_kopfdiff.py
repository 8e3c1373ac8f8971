"""The operator keeps no kopf diff base: it has no changing handlers to need one."""

from __future__ import annotations

import kopf

import kernelsession.operator.handlers
import kernelsession.operator.profilecontroller  # noqa: F401
from kernelsession.operator import kopfdiff


def test_no_diff_base_builds_nothing_and_stores_nothing() -> None:
    body = kopf.Body({"metadata": {"name": "a", "annotations": {}}, "spec": {"x": [1] * 100}})
    storage = kopfdiff.NoDiffBase()
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert dict(patch) == {}  # nothing written to the object


def test_the_operator_registers_no_changing_handler() -> None:
    registry = kopf.get_default_registry()
    watching = [str(h.id) for h in registry._watching.get_all_handlers()]
    assert "session_event" in " ".join(watching)  # the operator's handlers are in it
    assert kopfdiff.changing_handlers(registry) == []
