"""Service DNS names in status.url are recognised (pure)."""

from __future__ import annotations

import pytest

from kernelsession.client._reach import service_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("alice.labs.svc.cluster.local", ("alice", "labs")),
        ("alice.labs.svc", ("alice", "labs")),
        ("alice.labs.svc.example.internal", ("alice", "labs")),
        ("alice.labs.example.org", None),
        ("10.96.0.12", None),
        ("localhost", None),
        (".labs.svc", None),
    ],
)
def test_service_host(host: str, expected: tuple[str, str] | None) -> None:
    assert service_host(host) == expected
