"""Two operators, one active: a standby does nothing, and takes over when the active one
dies (SIGKILL, by PID) within 15 s. Here both are processes on the local cluster; the
same with the operator's Deployment pods is tests/operator/test_suspend_home.py
(test_standby_takes_over_within_15s, real node)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from helpers import LABS, OPERATOR_ENV, apply_session, get_ks, wait_for, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _leader_gauge(op: OperatorProcess) -> float | None:
    for line in op.metrics().splitlines():
        if line.startswith("kernelsession_leader "):
            return float(line.split()[1])
    return None


def _holder(cluster: LocalCluster) -> str:
    lease = cluster.get_json("-n", OPERATOR_NAMESPACE, "lease/kernelsession-operator")
    return str(lease["spec"].get("holderIdentity") or "")


def test_standby_takes_over_when_the_active_operator_dies(
    installed: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    active_id = wait_for(lambda: _holder(installed), timeout=30, what="a lease holder")
    standby_id = f"standby-{uuid.uuid4().hex[:6]}"
    standby = OperatorProcess(
        installed,
        tmp_path / "standby",
        env=OPERATOR_ENV | {"KERNELSESSION_LEADER_IDENTITY": standby_id},
    )
    standby.start()
    tag = uuid.uuid4().hex[:6]
    before, after = f"fo{tag}a", f"fo{tag}b"
    try:
        assert _leader_gauge(standby) == 0
        assert _leader_gauge(operator) == 1
        apply_session(installed, before, {"user": "fay"})
        wait_phase(installed, before, "Ready", timeout=90)
        assert _holder(installed) == active_id
        assert "child created" not in standby.logs()  # the standby did nothing

        killed = time.monotonic()
        operator.kill()  # SIGKILL by PID: no clean release
        wait_for(
            lambda: _holder(installed) == standby_id,
            timeout=30,
            interval=0.2,
            what="the standby holding the lease",
        )
        took = time.monotonic() - killed
        print(f"takeover after {took:.1f}s")
        assert took <= 15
        assert _leader_gauge(standby) == 1

        # The new active operator serves new and existing sessions.
        apply_session(installed, after, {"user": "fay"})
        wait_phase(installed, after, "Ready", timeout=90)
        assert get_ks(installed, before)["status"]["phase"] == "Ready"
        assert "child created" in standby.logs()
    finally:
        standby.stop()  # SIGTERM: releases the lease
        operator.start()
        installed.kubectl(
            "-n", LABS, "delete", "ks", before, after, "--ignore-not-found", "--wait=false",
            check=False,
        )  # fmt: skip
    wait_for(lambda: _holder(installed) == active_id, timeout=30, what="the shared operator back")
