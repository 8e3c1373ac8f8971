"""Failover as it happens: the active operator replica crashes (SIGKILL), freezes
(SIGSTOP) or is cut off from the API server (a partition), not stopped gracefully.

Each test: a Ready session A, then the fault to the replica holding the Lease, a session
B created during the gap; then B becomes Ready, A's children are the same objects as
before (nothing replaced, duplicated or lost), and the API server's audit log shows that
the old replica wrote nothing after the new leader's first write (a write: a successful
mutating request other than on the Lease; the replica: the pod name in the request's
bound service-account token). Takeover times are printed, not asserted (see
docs/failover.md for the measured figures).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from faults import (
    Partition,
    api_server_port,
    late_writes,
    leading,
    process_state,
    replica_writes,
    signal_container,
)
from helpers import apply_session, children, requires, wait_for, wait_phase

from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.operator_process import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

OPERATOR_USER = audit.service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
LEASE = "lease/kernelsession-operator"


def _lease(cluster: LocalCluster) -> dict[str, Any]:
    return dict(cluster.get_json("-n", OPERATOR_NAMESPACE, LEASE)["spec"])


def _renewed_after(spec: dict[str, Any], when: datetime) -> bool:
    renew = spec.get("renewTime")
    return bool(renew) and datetime.fromisoformat(renew.replace("Z", "+00:00")) > when


def _pair(operator: InClusterOperator) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the replica holding the Lease, the standby), both Ready."""

    def both() -> tuple[dict[str, Any], dict[str, Any]] | None:
        pods = operator.ready_pods()
        holder = operator.leader()
        leaders = [p for p in pods if p["metadata"]["name"] == holder]
        others = [p for p in pods if p["metadata"]["name"] != holder]
        if len(pods) == 2 and len(leaders) == 1:
            return leaders[0], others[0]
        return None

    return wait_for(both, timeout=180, what="two Ready operator replicas, one holding the Lease")


@pytest.fixture
def replicas(installed: LocalCluster, operator: InClusterOperator) -> Iterator[InClusterOperator]:
    requires(installed, "real_node", "needs the operator as the two-replica Deployment")
    assert installed.audit_log is not None, "the shared cluster runs with audit=True"
    _pair(operator)
    yield operator
    _pair(operator)  # leave both replicas running for the next test


def _child_uids(cluster: LocalCluster, name: str) -> dict[str, list[str]]:
    return {
        kind: sorted(o["metadata"]["uid"] for o in objs)
        for kind, objs in children(cluster, name).items()
    }


def _assert_children_once(cluster: LocalCluster, name: str) -> None:
    found = children(cluster, name)
    assert {"Secret", "Pod", "Service", "NetworkPolicy"} <= set(found), sorted(found)
    live = {
        k: [o for o in v if not o["metadata"].get("deletionTimestamp")] for k, v in found.items()
    }
    assert {k: len(v) for k, v in live.items() if len(v) != 1} == {}, name


def _writes_since(cluster: LocalCluster, offset: int) -> list[audit.Entry]:
    assert cluster.audit_log is not None
    return replica_writes(audit.read(cluster.audit_log, offset=offset), OPERATOR_USER)


def _report_and_assert_no_late_writes(
    cluster: LocalCluster, offset: int, old: str, new: str, what: str
) -> None:
    writes = _writes_since(cluster, offset)
    first_new, late = late_writes(writes, old, new)
    old_writes = [e for e in writes if e.pod == old]
    last = old_writes[-1].time if old_writes else "-"
    print(
        f"[{what}] new leader {new}: first write {first_new}; old replica {old}: "
        f"{len(old_writes)} writes since the fault, the last at {last}"
    )
    assert first_new is not None, f"the new leader {new} wrote nothing"
    assert [(e.key, e.name, e.time) for e in late] == []


async def test_sigkill_of_the_active_replica(
    installed: LocalCluster, replicas: InClusterOperator, session_name: str
) -> None:
    """SIGKILL every process of the active replica's container (no SIGTERM, no release of
    the Lease): the Lease is renewed again (by the standby once it has lasted a lease
    duration; the restarted container waits like any other replica, though the Lease
    names its pod), a session created during the gap becomes Ready,
    and nothing is duplicated or replaced."""
    a, b = f"{session_name}a", f"{session_name}b"
    try:
        apply_session(installed, a, {"user": "kai"})
        wait_phase(installed, a, "Ready", timeout=120)
        before = _child_uids(installed, a)
        leader, _ = _pair(replicas)
        name = leader["metadata"]["name"]
        restarts = int(leader["status"]["containerStatuses"][0].get("restartCount", 0))

        killed_at = datetime.now(UTC)
        t0 = time.monotonic()
        pids = signal_container(installed, leader, signal.SIGKILL)
        apply_session(installed, b, {"user": "kai"})
        spec = wait_for(
            lambda: (s := _lease(installed)) and _renewed_after(s, killed_at) and s,
            timeout=60,
            what="the Lease renewed by a live replica",
        )
        renewed = time.monotonic() - t0
        wait_phase(installed, b, "Ready", timeout=120)
        ready = time.monotonic() - t0
        print(
            f"[sigkill] killed {len(pids)} processes of {name}; Lease renewed after "
            f"{renewed:.1f}s by {spec['holderIdentity']}; session created in the gap Ready "
            f"after {ready:.1f}s"
        )
        pod = installed.get_json("-n", OPERATOR_NAMESPACE, f"pod/{name}")
        assert int(pod["status"]["containerStatuses"][0]["restartCount"]) > restarts
        assert _child_uids(installed, a) == before
        _assert_children_once(installed, a)
        _assert_children_once(installed, b)
    finally:
        for n in (a, b):
            installed.kubectl("-n", "labs", "delete", "ks", n, "--wait=false", check=False)


async def test_sigstop_of_the_active_replica(
    installed: LocalCluster, replicas: InClusterOperator, session_name: str
) -> None:
    """SIGSTOP the active replica (alive, silent): the standby takes the Lease and keeps
    it after SIGCONT; the thawed old leader writes nothing after the standby's first
    write and becomes the standby."""
    assert installed.audit_log is not None
    a, b = f"{session_name}a", f"{session_name}b"
    leader: dict[str, Any] | None = None
    try:
        apply_session(installed, a, {"user": "kai"})
        wait_phase(installed, a, "Ready", timeout=120)
        before = _child_uids(installed, a)
        leader, standby = _pair(replicas)
        old, new = leader["metadata"]["name"], standby["metadata"]["name"]
        offset = audit.size(installed.audit_log)

        t0 = time.monotonic()
        pids = signal_container(installed, leader, signal.SIGSTOP)
        wait_for(
            lambda: {process_state(p) for p in pids} == {"T"},
            timeout=10,
            what=f"every process of {old} stopped",
        )
        apply_session(installed, b, {"user": "kai"})
        wait_for(lambda: replicas.leader() == new, timeout=60, what=f"{new} holding the Lease")
        takeover = time.monotonic() - t0
        wait_phase(installed, b, "Ready", timeout=120)
        ready = time.monotonic() - t0

        signal_container(installed, leader, signal.SIGCONT)
        thawed = time.monotonic()
        leader_after = leader
        leader = None
        # the thawed replica answers again, as a standby
        wait_for(
            lambda: leading(leader_after) is False,
            timeout=30,
            what=f"{old} answering as a standby",
        )
        # it has run its election since (read the Lease) and not taken it back
        wait_for(
            lambda: any(
                e.pod == old and e.resource == "leases" and e.verb == "get"
                for e in audit.read(installed.audit_log, offset=offset)
                if e.user == OPERATOR_USER and e.time > _stamp(thawed)
            ),
            timeout=30,
            what=f"{old} reading the Lease after SIGCONT",
        )
        assert replicas.leader() == new
        print(
            f"[sigstop] {len(pids)} processes of {old} stopped; {new} held the Lease after "
            f"{takeover:.1f}s; the session created in the gap Ready after {ready:.1f}s"
        )
        _report_and_assert_no_late_writes(installed, offset, old, new, "sigstop")
        assert _child_uids(installed, a) == before
        _assert_children_once(installed, a)
        _assert_children_once(installed, b)
    finally:
        if leader is not None:
            signal_container(installed, leader, signal.SIGCONT)
        for n in (a, b):
            installed.kubectl("-n", "labs", "delete", "ks", n, "--wait=false", check=False)


async def test_partition_of_the_active_replica(
    installed: LocalCluster, replicas: InClusterOperator, session_name: str
) -> None:
    """Cut the active replica off from the API server (its packets dropped both ways,
    open connections included) while it holds the Lease: it stops acting at its renew
    deadline, before the standby takes over; the standby starts the session created in
    the gap; healed, the old replica writes nothing and stays the standby."""
    assert installed.audit_log is not None
    a, b = f"{session_name}a", f"{session_name}b"
    partition: Partition | None = None
    try:
        apply_session(installed, a, {"user": "kai"})
        wait_phase(installed, a, "Ready", timeout=120)
        before = _child_uids(installed, a)
        leader, standby = _pair(replicas)
        old, new = leader["metadata"]["name"], standby["metadata"]["name"]
        assert leading(leader) is True
        offset = audit.size(installed.audit_log)

        partition = Partition(leader["status"]["podIP"], api_server_port(installed))
        t0 = time.monotonic()
        partition.cut()
        apply_session(installed, b, {"user": "kai"})
        # Watch both at once: the old replica's own word (its leader gauge, which the
        # partition leaves reachable) and the Lease.
        stepped_down: float | None = None
        samples: list[tuple[float, Any]] = []

        def takeover() -> bool:
            nonlocal stepped_down
            said = leading(leader)
            samples.append((round(time.monotonic() - t0, 2), said))
            if stepped_down is None and said is False:
                stepped_down = time.monotonic() - t0
            return replicas.leader() == new

        wait_for(takeover, timeout=60, what=f"{new} holding the Lease", interval=0.05)
        took = time.monotonic() - t0
        if stepped_down is None:
            logs = installed.kubectl("-n", OPERATOR_NAMESPACE, "logs", old, check=False).stdout
            pytest.fail(
                f"{old} still said active when {new} took the Lease after {took:.1f}s; "
                f"its leader gauge (s since the cut, leading): {samples}\nits log:\n{logs[-6000:]}"
            )
        wait_phase(installed, b, "Ready", timeout=120)
        ready = time.monotonic() - t0
        dropped = partition.dropped()
        assert dropped > 0

        partition.heal()
        healed = time.monotonic()
        wait_for(
            lambda: any(
                e.pod == old and e.resource == "leases" and e.verb == "get" and e.succeeded
                for e in audit.read(installed.audit_log, offset=offset)
                if e.user == OPERATOR_USER and e.time > _stamp(healed)
            ),
            timeout=60,
            what=f"{old} reading the Lease after the partition healed",
        )
        assert replicas.leader() == new
        assert leading(leader) is False
        print(
            f"[partition] {old} cut off ({dropped} packets dropped): it stepped down after "
            f"{stepped_down:.1f}s, {new} held the Lease after {took:.1f}s; the session "
            f"created in the gap Ready after {ready:.1f}s; healed after "
            f"{healed - t0:.1f}s, {old} stayed the standby"
        )
        _report_and_assert_no_late_writes(installed, offset, old, new, "partition")
        assert _child_uids(installed, a) == before
        _assert_children_once(installed, a)
        _assert_children_once(installed, b)
    finally:
        if partition is not None:
            partition.heal()
        for n in (a, b):
            installed.kubectl("-n", "labs", "delete", "ks", n, "--wait=false", check=False)


def _stamp(monotonic: float) -> str:
    """The audit log's time format for a moment given on the monotonic clock."""
    wall = datetime.now(UTC).timestamp() - (time.monotonic() - monotonic)
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
