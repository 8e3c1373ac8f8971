"""Leader election on a Lease: who acts, when a standby takes over, what is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kernelsession.operator.election import LeaseRecord, lease_body, next_step

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def held_by(holder: str | None, renewed_ago: float = 1.0) -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        renew_time=NOW - timedelta(seconds=renewed_ago),
        acquire_time=NOW - timedelta(seconds=100),
        duration=10,
        transitions=3,
        resource_version="42",
    )


@pytest.mark.parametrize(
    ("record", "unchanged_for", "step"),
    [
        (None, 0.0, "create"),
        (held_by("me"), 0.0, "renew"),
        (held_by("me", renewed_ago=999), 0.0, "renew"),  # ours, this process took it
        (held_by(None), 0.0, "acquire"),  # released on a clean shutdown
        (held_by("other"), 3.0, "wait"),  # alive
        (held_by("other"), 9.9, "wait"),
        (held_by("other"), 10.0, "acquire"),  # not renewed for a lease duration
        (held_by("other", renewed_ago=21), 0.0, "acquire"),  # stale at startup
        (held_by("other", renewed_ago=15), 0.0, "wait"),  # its clock may be behind
    ],
)
def test_next_step(record: LeaseRecord | None, unchanged_for: float, step: str) -> None:
    assert next_step(record, "me", now=NOW, unchanged_for=unchanged_for) == step


def test_a_restarted_run_of_the_holder_waits_like_any_other_replica() -> None:
    # the Lease names this pod, but this process never took it: an earlier run's
    assert next_step(held_by("me"), "me", now=NOW, unchanged_for=3.0, mine=False) == "wait"
    assert next_step(held_by("me"), "me", now=NOW, unchanged_for=10.0, mine=False) == "acquire"
    stale = held_by("me", renewed_ago=21)
    assert next_step(stale, "me", now=NOW, unchanged_for=0.0, mine=False) == "acquire"


def test_takeover_writes_holder_counts_a_transition_and_keeps_the_version() -> None:
    body = lease_body("l", "ns", "me", now=NOW, duration=10, previous=held_by("other"))
    spec = body["spec"]
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 4
    assert spec["acquireTime"] == spec["renewTime"] == "2026-11-22T12:00:00.000000Z"
    assert spec["leaseDurationSeconds"] == 10
    assert body["metadata"]["resourceVersion"] == "42"  # optimistic concurrency


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    body = lease_body("l", "ns", "me", now=NOW, duration=10, previous=held_by("me"))
    assert body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["acquireTime"] == "2026-11-22T11:58:20.000000Z"


def test_release_clears_the_holder() -> None:
    body = lease_body("l", "ns", "me", now=NOW, duration=10, previous=held_by("me"), release=True)
    assert body["spec"]["holderIdentity"] is None
    assert next_step(held_by(None), "other", now=NOW, unchanged_for=0) == "acquire"


def test_first_lease_has_no_version() -> None:
    body = lease_body("l", "ns", "me", now=NOW, duration=10, previous=None)
    assert "resourceVersion" not in body["metadata"]
    assert body["spec"]["leaseTransitions"] == 0
