"""The failover tests' reading of the audit log: who wrote what, and after whom."""

from __future__ import annotations

import json

from faults import late_writes, replica_writes

from kernelsession.localcluster.cluster import audit

SA = "system:serviceaccount:kernelsession-system:kernelsession-operator"


def line(verb: str, resource: str, pod: str, at: str, code: int = 201, user: str = SA) -> str:
    extra = {"authentication.kubernetes.io/pod-name": [pod]} if pod else {}
    return json.dumps(
        {
            "kind": "Event",
            "stage": "ResponseComplete",
            "verb": verb,
            "user": {"username": user, "extra": extra},
            "objectRef": {"resource": resource, "namespace": "labs", "name": "x"},
            "responseStatus": {"code": code},
            "requestReceivedTimestamp": at,
            "stageTimestamp": at.replace("00Z", "50Z"),
        }
    )


def test_the_pod_of_a_bound_token_is_read() -> None:
    entry = audit.parse_line(line("create", "pods", "op-1", "2026-12-04T16:00:00.000000Z"))
    assert entry is not None
    assert entry.pod == "op-1"
    assert entry.received == "2026-12-04T16:00:00.000000Z"
    assert entry.succeeded
    assert audit.parse_line(line("get", "pods", "", "2026-12-04T16:00:00.000000Z")).pod == ""  # type: ignore[union-attr]


def test_late_writes_are_the_old_replicas_successful_writes_after_the_new_ones_first() -> None:
    lines = [
        line("create", "pods", "old", "2026-12-04T16:00:01.000000Z"),  # before: fine
        line("update", "leases", "old", "2026-12-04T16:00:03.000000Z"),  # the Lease: not a write
        line("create", "secrets", "new", "2026-12-04T16:00:02.000000Z"),  # the new one's first
        line("patch", "kernelsessions", "old", "2026-12-04T16:00:04.000000Z", code=409),  # failed
        line("create", "pods", "old", "2026-12-04T16:00:05.000000Z", user="someone"),
        line("create", "events", "old", "2026-12-04T16:00:06.000000Z"),  # split brain
    ]
    writes = replica_writes(audit.parse(lines), SA)
    first, late = late_writes(writes, "old", "new")
    assert first == "2026-12-04T16:00:02.000000Z"
    assert [(e.resource, e.time) for e in late] == [("events", "2026-12-04T16:00:06.000050Z")]


def test_no_write_of_the_new_replica_means_nothing_to_compare() -> None:
    writes = replica_writes(
        audit.parse([line("create", "pods", "old", "2026-12-04T16:00:01.000000Z")]), SA
    )
    assert late_writes(writes, "old", "new") == (None, [])
