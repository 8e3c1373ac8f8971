"""`kernelsession exec NAME` and `kernelsession probe NAME` against a real session."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LABS, apply_session, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CLI = str(Path(sys.executable).parent / "kernelsession")


def run(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    env.pop("JUPYTER_TOKEN", None)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def test_exec_and_probe_by_name(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "kim"})
    wait_phase(installed, session_name, "Ready", timeout=90)

    done = run(installed, "exec", session_name, "-n", LABS, "-c", "print('via', 'cli')")
    assert (done.returncode, done.stdout) == (0, "via cli\n"), done.stderr

    failed = run(installed, "exec", session_name, "-c", "1/0")
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stdout + failed.stderr

    probe = run(installed, "probe", session_name, "--json")
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["healthy"] is True

    missing = run(installed, "probe", "no-such-session")
    assert missing.returncode == 1
    assert "no-such-session" in missing.stdout + missing.stderr
    assert run(installed, "probe").returncode == 2  # usage error

    raw = installed.get_json("-n", LABS, f"secret/{session_name}-token")["data"]["token"]
    token = base64.b64decode(raw).decode()
    for result in (done, failed, probe, missing):
        assert token not in result.stdout + result.stderr
