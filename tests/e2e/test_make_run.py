"""`make run`, as a newcomer runs it: sample output, a Ready session, Ctrl-C leaves nothing
(no process, and the host's mounts, links, routes, iptables, cgroups and sysctls as before);
and a node whose process tree was SIGKILLed is cleaned up by the next start."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.host import state as hoststate

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.exclusive_node]
REPO = Path(__file__).parents[2]


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float, seen: list[str]) -> str:
    """Read lines until one matches ``pattern`` (or fail with what was printed)."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(seen)}")


def _kubectl(kubectl: str, kubeconfig: str, *args: str) -> str:
    return subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def _lab_through_ingress(kubectl: str, kubeconfig: str) -> None:
    """With ``--ingress``: alice's externalURL answers through Traefik with her token."""
    url = _kubectl(
        kubectl,
        kubeconfig,
        "-n",
        "labs",
        "get",
        "ks",
        "alice",
        "-o",
        "jsonpath={.status.externalURL}",
    )
    assert url.startswith("http://10.96."), url  # the controller's Service, from this host
    assert url.endswith("/labs/labs/alice/"), url
    raw = _kubectl(
        kubectl,
        kubeconfig,
        "-n",
        "labs",
        "get",
        "secret",
        "alice-token",
        "-o",
        "jsonpath={.data.token}",
    )
    token = base64.b64decode(raw).decode()
    with httpx.Client(trust_env=False, timeout=10) as http:
        answer = http.get(url + "api/status", headers={"Authorization": f"token {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("content-type", "").startswith("application/json")


@pytest.mark.parametrize("ingress", [False, True], ids=["plain", "ingress"])
def test_make_run_serves_until_ctrl_c(tmp_path: Path, exclusive_node: None, ingress: bool) -> None:
    before = hoststate.snapshot()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", *(["RUN_ARGS=--ingress"] if ingress else [])],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C goes to the whole group
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: list[str] = []
    try:
        line = _read_until(proc, r"^export KUBECONFIG=/", 300, seen)
        kubeconfig = line.split("=", 1)[1].strip()
        assert Path(kubeconfig).is_absolute()
        _read_until(proc, r"ran Python in labs/alice", 240, seen)
        _read_until(proc, r"^499999500000$", 10, seen)  # the sample's printed stdout
        _read_until(proc, r"Ctrl-C stops everything", 30, seen)
        kubectl = re.search(r"export PATH=(\S+/bin):\$PATH", "".join(seen))
        assert kubectl, "".join(seen)
        out = _kubectl(f"{kubectl.group(1)}/kubectl", kubeconfig, "get", "ks", "-n", "labs")
        assert re.search(r"^alice\s+alice\s+Ready\s+True", out, re.M), out
        assert "kernelsession open alice" in "".join(seen)
        if ingress:
            assert "through the ingress controller" in "".join(seen)
            _lab_through_ingress(f"{kubectl.group(1)}/kubectl", kubeconfig)
        during = hoststate.diff(before, hoststate.snapshot())
        assert any("ks0" in change for change in during), during  # the node was really up
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 5  # make's python, etcd, apiserver, kcm, kubelet, operator, lab
        workdir = Path(kubeconfig).parents[1]
        assert workdir.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        try:
            rest, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
            raise
    seen.append(rest or "")
    assert "stopped every process it started" in "".join(seen)
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [(p.pid, p.name()) for p in alive]
    assert not workdir.exists()
    assert hoststate.diff(before, hoststate.snapshot()) == []


CRASHING_NODE = """
import json, os, signal, subprocess, sys, time
from kernelsession.localcluster.cluster import LocalCluster
cluster = LocalCluster()
cluster.start()
lab = cluster.image_refs["lab"]
cluster.kubectl("run", "orphan", f"--image={lab}", "--command", "--", "sleep", "3600")
cluster.kubectl("wait", "--for=condition=Ready", "pod/orphan", "--timeout=120s")
# an egress policy: the enforcer hooks INPUT too (its chains must go with the crash cleanup)
policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "deny-egress", "namespace": "default"},
          "spec": {"podSelector": {"matchLabels": {"run": "orphan"}}, "policyTypes": ["Egress"]}}
cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
deadline = time.monotonic() + 60
while "-A INPUT -j KS-NETPOL-INPUT" not in subprocess.run(
    ["iptables-save", "-t", "filter"], capture_output=True, text=True
).stdout:
    assert time.monotonic() < deadline, "the enforcer never hooked INPUT"
    time.sleep(0.1)
print("READY", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no teardown at all
"""


def test_next_start_cleans_up_after_a_crashed_node(exclusive_node: None) -> None:
    before = hoststate.snapshot()
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_NODE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "READY" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == -signal.SIGKILL
    left = hoststate.diff(before, hoststate.snapshot())
    assert any("kubepods" in change for change in left), left  # the container survived it
    assert any("-A INPUT -j KS-NETPOL-INPUT" in change for change in left), left
    crashed = sorted(Path("/tmp").glob("ks-cluster-*"))
    cluster = LocalCluster()
    cluster.start()  # cleans up first, then starts normally
    assert not any(d.exists() for d in crashed)  # the crashed run's work dir is gone too
    try:
        nodes = cluster.kubectl("get", "pods", "-A", "-o", "name").stdout
        assert "orphan" not in nodes
    finally:
        assert cluster.stop() == []
    assert hoststate.diff(before, hoststate.snapshot()) == []
