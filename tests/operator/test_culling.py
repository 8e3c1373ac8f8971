"""Idle culling from the lab's own activity: idle labs go, busy ones stay, resume works."""

from __future__ import annotations

import asyncio

import pytest
from helpers import LABS, apply_session, children, events_for, get_ks, wait_for, wait_phase

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


async def test_idle_lab_is_culled_then_resumed(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "hal", "culling": {"idleTimeoutSeconds": 4}})
    ready = wait_phase(installed, session_name, "Ready", timeout=90)
    status = wait_phase(installed, session_name, "Culled", timeout=30, reason="IdleTimeout")
    assert "idleTimeoutSeconds" in status["message"]
    assert "kernelsession.dev/resume" in status["message"]
    assert status["culledTime"]
    reasons = [e["reason"] for e in events_for(installed, session_name)]
    assert "CullingSoon" in reasons
    assert "Culled" in reasons
    wait_for(
        lambda: "Pod" not in children(installed, session_name),
        timeout=30,
        what="culled pod removed",
    )
    assert 'kernelsession_culls_total{reason="IdleTimeout"}' in operator.metrics()

    installed.kubectl(
        "-n", LABS, "annotate", "ks", session_name, "kernelsession.dev/resume=1", "--overwrite"
    )
    again = wait_phase(installed, session_name, "Ready", timeout=90)
    assert again["resumeRequest"] == "1"
    assert again["readyTime"] != ready["readyTime"] or again["podName"] == ready["podName"]


async def test_busy_kernel_is_not_culled(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    ks: KernelSessionClient,
) -> None:
    apply_session(installed, session_name, {"user": "ivy", "culling": {"idleTimeoutSeconds": 3}})
    wait_phase(installed, session_name, "Ready", timeout=90)
    manager = await ks.lab_session(session_name)
    async with manager as lab:
        # Busy for three times the idle timeout: the operator must leave it alone.
        result = await lab.run_python("import time; time.sleep(9); print('survived')", timeout=30)
        assert result == "survived\n"
        assert get_ks(installed, session_name)["status"]["phase"] == "Ready"
    # Once idle and disconnected, it goes.
    await asyncio.to_thread(wait_phase, installed, session_name, "Culled", 30, "IdleTimeout")
