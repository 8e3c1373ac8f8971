"""Labs that cannot start turn Failed within seconds with the real reason."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import apply_session, events_for, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unschedulable", {"nodeSelector": {"gpu": "a100"}}, "Unschedulable", "selector"),
    (
        "missing-secret",
        {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]},
        "ConfigError",
        "nope",
    ),
    ("bad-command", {"env": [{"name": "PATH", "value": "/nonexistent"}]}, "CannotRun", "jupyter"),
    (
        "crash-loop",
        {"env": [{"name": "PYTHONHOME", "value": "/nonexistent"}]},
        "CrashLoop",
        "exit code",
    ),
]


@pytest.mark.parametrize(("case", "extra", "reason", "hint"), CASES, ids=[c[0] for c in CASES])
def test_failure_surfaces_fast(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    case: str,
    extra: dict[str, Any],
    reason: str,
    hint: str,
) -> None:
    started = time.monotonic()
    apply_session(installed, session_name, {"user": "gina", **extra})
    status = wait_phase(installed, session_name, "Failed", timeout=60, reason=reason)
    elapsed = time.monotonic() - started
    print(f"{case}: Failed/{reason} after {elapsed:.1f}s")
    assert hint in status["message"], status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert any(
        e["reason"] == reason and e["type"] == "Warning"
        for e in events_for(installed, session_name)
    )
