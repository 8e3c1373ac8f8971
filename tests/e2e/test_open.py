"""`kernelsession open NAME` on the local cluster: the real port-forward through the API
server to a real lab pod, JupyterLab in headless Chromium, RBAC as the caller.

These need a node whose kubelet serves port-forward (the real kubelet + containerd);
on a cluster without one they skip, saying so.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from headless import (
    browser_missing,
    headless_chromium,
    run_in_notebook,
    stop_process_tree,
    wait_for_launcher,
)
from helpers import LABS, apply_session, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy.operator_process import OperatorProcess

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CLI = str(Path(sys.executable).parent / "kernelsession")
SAMPLE_RBAC = Path(__file__).parents[2] / "manifests" / "samples" / "lab-user-rbac.yaml"


@pytest.fixture
def node(installed: LocalCluster) -> LocalCluster:
    """The cluster, when its node serves port-forward; skip otherwise."""
    if not getattr(installed, "real_node", False):
        pytest.skip(
            "kubectl port-forward needs the real kubelet + containerd node; "
            "this cluster's process kubelet does not serve it"
        )
    return installed


@dataclass
class Opened:
    process: subprocess.Popen[str]
    url: str
    stderr_path: Path
    started: float

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def root(self) -> str:
        """The lab's base URL through the local end (the printed URL opens ``<root>lab``)."""
        path = urlsplit(self.url).path
        assert path.endswith("/lab"), self.url
        return self.origin + path.removesuffix("lab")

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def token_of(cluster: LocalCluster, name: str) -> str:
    raw = cluster.get_json("-n", LABS, f"secret/{name}-token")["data"]["token"]
    return base64.b64decode(raw).decode()


@contextmanager
def kernelsession_open(
    kubeconfig: Path, tmp_path: Path, name: str, *extra: str
) -> Iterator[Opened]:
    """Run `kernelsession open NAME`, wait for its URL line; stop it by PID afterwards."""
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    env["KUBECONFIG"] = str(kubeconfig)
    stderr_path = tmp_path / f"open-{name}.stderr"
    started = time.monotonic()
    with stderr_path.open("w") as err:
        process = subprocess.Popen(
            [CLI, "open", name, "-n", LABS, "--no-browser", "-v", *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"open printed nothing:\n{stderr_path.read_text()}"
        yield Opened(process, line.strip(), stderr_path, started)
    finally:
        stop_process_tree(process)


def run_cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_open_in_browser_through_the_api_server(
    node: LocalCluster, operator: OperatorProcess, session_name: str, tmp_path: Path
) -> None:
    apply_session(node, session_name, {"user": "alice"})
    wait_phase(node, session_name, "Ready", timeout=120)
    token = token_of(node, session_name)
    with (
        headless_chromium(tmp_path) as driver,
        kernelsession_open(node.kubeconfig, tmp_path, session_name) as opened,
    ):
        assert opened.url.startswith("http://127.0.0.1:")
        assert token not in opened.url
        driver.get(opened.url)
        wait_for_launcher(driver)
        rendered = time.monotonic() - opened.started
        run_in_notebook(driver, "print(6*7)", "42")
        assert driver.save_screenshot(str(tmp_path / "jupyterlab-port-forward.png"))
        assert token not in driver.page_source
        raw = driver.execute_script(f"return fetch('{opened.root}lab').then(r => r.text())")
        assert "jupyter-config-data" in raw
        assert token not in raw
        print(f"open -> JupyterLab rendered through the port-forward: {rendered:.2f} s")
        opened.process.send_signal(signal.SIGINT)
        assert opened.process.wait(30) == 0
        stderr = opened.stderr()
        assert "Traceback" not in stderr
        assert token not in stderr


def test_two_sessions_side_by_side(
    node: LocalCluster, operator: OperatorProcess, session_name: str, tmp_path: Path
) -> None:
    other = f"{session_name}b"
    apply_session(node, session_name, {"user": "alice"})
    apply_session(node, other, {"user": "bob"})
    try:
        wait_phase(node, session_name, "Ready", timeout=120)
        wait_phase(node, other, "Ready", timeout=120)
        with (
            kernelsession_open(node.kubeconfig, tmp_path, session_name) as a,
            kernelsession_open(node.kubeconfig, tmp_path, other) as b,
            httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as browser,
        ):
            assert a.origin != b.origin
            assert browser.get(a.url).status_code == 200
            assert browser.get(b.url).status_code == 200
            put = browser.put(
                a.root + "api/contents/only-in-a.txt",
                json={"type": "file", "format": "text", "content": "a"},
            )
            assert put.status_code == 201
            assert browser.get(a.root + "api/contents/only-in-a.txt").status_code == 200
            assert browser.get(b.root + "api/contents/only-in-a.txt").status_code == 404
    finally:
        node.kubectl(
            "-n", LABS, "delete", "ks", other, "--ignore-not-found", "--wait=false", check=False
        )


def test_open_resumes_a_culled_session_unless_told_not_to(
    node: LocalCluster, operator: OperatorProcess, session_name: str, tmp_path: Path
) -> None:
    apply_session(node, session_name, {"user": "alice", "culling": {"idleTimeoutSeconds": 8}})
    wait_phase(node, session_name, "Culled", timeout=120)
    refused = run_cli(node.kubeconfig, "open", session_name, "-n", LABS, "--no-resume")
    assert refused.returncode == 1
    assert "Culled" in refused.stderr
    assert "--no-resume" in refused.stderr
    assert "Traceback" not in refused.stderr
    with kernelsession_open(node.kubeconfig, tmp_path, session_name) as opened:
        assert "resuming" in opened.stderr()
        with httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as browser:
            assert browser.get(opened.url).status_code == 200


def test_user_without_rbac_gets_a_clear_403(
    node: LocalCluster,
    operator: OperatorProcess,
    session_name: str,
    sa_kubeconfig: Any,
) -> None:
    apply_session(node, session_name, {"user": "alice"})
    wait_phase(node, session_name, "Ready", timeout=120)
    kubeconfig = sa_kubeconfig(None, LABS, "nobody")
    denied = run_cli(kubeconfig, "open", session_name, "-n", LABS, "--no-browser")
    assert denied.returncode == 1
    assert "forbidden (403)" in denied.stderr
    assert "Traceback" not in denied.stderr
    assert denied.stdout == ""
    assert token_of(node, session_name) not in denied.stderr


def sample_role_for(service_account: str) -> list[dict[str, Any]]:
    """The sample's shared Role, bound to a ServiceAccount instead of group lab-users."""
    docs = [d for d in yaml.safe_load_all(SAMPLE_RBAC.read_text()) if d]
    (role,) = [d for d in docs if d["metadata"]["name"] == "kernelsession-lab-user"]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"open-{service_account}", "namespace": LABS},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": LABS}],
    }
    return [role, binding]


def test_the_sample_role_is_enough_to_open(
    node: LocalCluster,
    operator: OperatorProcess,
    session_name: str,
    sa_kubeconfig: Any,
    tmp_path: Path,
) -> None:
    apply_session(node, session_name, {"user": "alice"})
    wait_phase(node, session_name, "Ready", timeout=120)
    kubeconfig = sa_kubeconfig(sample_role_for("lab-user"), LABS, "lab-user")
    with (
        kernelsession_open(kubeconfig, tmp_path, session_name) as opened,
        httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as browser,
    ):
        assert browser.get(opened.url).status_code == 200
        assert browser.get(opened.root + "api/status").status_code == 200


def test_without_portforward_permission_the_forward_is_refused_clearly(
    node: LocalCluster,
    operator: OperatorProcess,
    session_name: str,
    sa_kubeconfig: Any,
) -> None:
    """May read the session and its token, may not create pods/portforward: exit 1,
    the message names the missing permission, no URL, no traceback."""
    apply_session(node, session_name, {"user": "alice"})
    wait_phase(node, session_name, "Ready", timeout=120)
    role, binding = sample_role_for("no-forward")
    role["metadata"]["name"] = "kernelsession-no-forward"
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["pods/portforward"]]
    binding["roleRef"]["name"] = "kernelsession-no-forward"
    kubeconfig = sa_kubeconfig([role, binding], LABS, "no-forward")
    denied = run_cli(kubeconfig, "open", session_name, "-n", LABS, "--no-browser")
    assert denied.returncode == 1
    assert "403 Forbidden" in denied.stderr
    assert "pods/portforward" in denied.stderr
    assert "Traceback" not in denied.stderr
    assert denied.stdout == ""
    assert token_of(node, session_name) not in denied.stderr
