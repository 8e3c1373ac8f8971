"""`kernelsession exec NAME` and `kernelsession probe NAME` against a real session, and
``KernelSessionClient.credentials()``'s typed errors from the real API server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import LABS, apply_session, wait_phase

from kernelsession.client import (
    KernelSessionApiError,
    KernelSessionClient,
    KernelSessionNotFoundError,
    resources,
)
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


async def test_credentials_errors_from_the_real_api_server(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    sa_kubeconfig: Callable[[Any, str, str], Path],
) -> None:
    """What tests/client/test_kubernetes_errors.py checks against a stand-in, here on the
    API server: RBAC's 403 for the token Secret, a missing session, and the CLI's message."""
    apply_session(installed, session_name, {"user": "kim"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    sa = f"reader-{session_name}"
    # may read sessions, not Secrets
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": sa, "namespace": LABS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": sa, "namespace": LABS},
         "rules": [{"apiGroups": [resources.GROUP], "resources": [resources.PLURAL],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": sa, "namespace": LABS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": LABS}]},
    ]  # fmt: skip
    kubeconfig = sa_kubeconfig(rbac, LABS, sa)
    try:
        async with KernelSessionClient(namespace=LABS, kubeconfig=str(kubeconfig)) as sessions:
            with pytest.raises(KernelSessionApiError) as excinfo:
                await sessions.credentials(session_name)
            assert excinfo.value.status == 403
            assert (excinfo.value.name, excinfo.value.namespace) == (session_name, LABS)
            with pytest.raises(KernelSessionNotFoundError):
                await sessions.credentials(f"{session_name}-absent")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("JUPYTER_TOKEN", None)
        refused = subprocess.run(
            [CLI, "exec", session_name, "-c", "print(1)"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 1
        assert session_name in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        installed.kubectl("-n", LABS, "delete", "rolebinding,role,serviceaccount", sa,
                          "--ignore-not-found", check=False)  # fmt: skip
