"""Probes on the real node: the prober Deployment sample and `kernelsession probe --spawn`.

- The sample ``manifests/samples/prober.yaml`` runs in ``labs`` from the image that ships
  the client (the operator image; the lab image has no ``kernelsession`` command), with
  the client label, restricted securityContext and its least RBAC. Its metrics (scraped
  from the host through its Service's cluster IP) show successes, then failures when
  the probed session is deleted, then successes when it is created again (new token).
  When its Deployment is deleted (SIGTERM) it closes its lab session.
- ``probe --spawn`` creates a temporary session, runs code and deletes it; interrupted
  with SIGINT mid-spawn it still leaves no session and no child behind.

Every process started here is stopped by PID; conditions are polled with deadlines.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from headless import stop_process_tree
from helpers import LABS, apply_session, children, lab_path, wait_for, wait_phase
from prometheus_client.parser import text_string_to_metric_families

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy.rollout import wait_rollout

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SAMPLE = Path(__file__).parents[2] / "manifests" / "samples" / "prober.yaml"
CLI = str(Path(sys.executable).parent / "kernelsession")
PROBER = "kernelsession-prober"
SPAWN_SELECTOR = "kernelsession.dev/probe=spawn"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with httpx.Client(trust_env=False, timeout=5) as client:
        text = client.get(url).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def failures(samples: Samples, name: str = "kernelsession_probe_total") -> dict[str, float]:
    key = "reason" if name == "kernelsession_spawn_total" else "error"
    return {
        dict(labels)[key]: v
        for (n, labels), v in samples.items()
        if n == name and dict(labels)["result"] == "failure"
    }


def _env(cluster: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    return env


def _token(cluster: LocalCluster, name: str) -> str:
    raw = cluster.get_json("-n", LABS, f"secret/{name}-token")["data"]["token"]
    return base64.b64decode(raw).decode()


def prober_objects(cluster: LocalCluster, session: str) -> list[dict[str, Any]]:
    """The sample, pointed at ``session`` (the test makes the session itself), checking
    every 1 s, from the locally built image that ships the client."""
    objects = []
    for doc in yaml.safe_load_all(SAMPLE.read_text()):
        if not doc or doc["kind"] == "KernelSession":
            continue
        if doc["kind"] == "Role":
            for rule in doc["rules"]:
                names = rule["resourceNames"]
                rule["resourceNames"] = [n.replace("probe-target", session) for n in names]
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            container["image"] = cluster.image_refs["operator"]
            container["args"] = [
                session if a == "probe-target" else "--every=1" if a.startswith("--every") else a
                for a in container["args"]
            ]
        objects.append(doc)
    return objects


def _lab_sessions(cluster: LocalCluster, session: str) -> list[dict[str, Any]]:
    """The lab's own sessions, asked from the host (allowed by the lab's NetworkPolicy)."""
    ip = cluster.get_json("-n", LABS, f"svc/{session}")["spec"]["clusterIP"]
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.get(
            f"http://{ip}:8888{lab_path(session)}api/sessions",
            headers={"Authorization": f"token {_token(cluster, session)}"},
        )
    response.raise_for_status()
    sessions: list[dict[str, Any]] = response.json()
    return sessions


def test_prober_deployment_sample_success_failure_success(
    installed: LocalCluster, operator: object, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "prober"})
    wait_phase(installed, session_name, "Ready", timeout=120)
    installed.apply(prober_objects(installed, session_name))
    try:
        wait_rollout(
            installed,
            LABS,
            PROBER,
            selector=f"app.kubernetes.io/name={PROBER}",
            timeout=180,
            what="the prober sample",
        )
        ip = installed.get_json("-n", LABS, f"svc/{PROBER}")["spec"]["clusterIP"]
        url = f"http://{ip}:9100/metrics"

        def successes() -> float:
            return value(scrape(url), "kernelsession_probe_total", result="success", error="")

        wait_for(lambda: successes() >= 2, timeout=120, what="2 successful checks in-cluster")
        samples = scrape(url)
        assert value(samples, "kernelsession_probe_up") == 1
        assert value(samples, "kernelsession_probe_seconds_count", phase="websocket_open") >= 1
        old_token = _token(installed, session_name)

        # the probed session goes away: failures, typed, and probe_up 0
        installed.kubectl("-n", LABS, "delete", "ks", session_name, "--timeout=60s", timeout=90)
        wait_for(
            lambda: failures(scrape(url)).get("KernelSessionNotFoundError", 0) >= 1,
            timeout=120,
            what="failures typed KernelSessionNotFoundError",
        )
        assert value(scrape(url), "kernelsession_probe_up") == 0

        # created again (new token Secret): the prober finds it and succeeds again
        before = successes()
        apply_session(installed, session_name, {"user": "prober"})
        wait_phase(installed, session_name, "Ready", timeout=120)
        wait_for(lambda: successes() >= before + 2, timeout=120, what="successes again")
        assert value(scrape(url), "kernelsession_probe_up") == 1
        wait_for(  # one lab session, kept open across checks
            lambda: len(_lab_sessions(installed, session_name)) == 1,
            timeout=30,
            what="exactly one lab session on the recreated lab",
        )

        logs = installed.kubectl("-n", LABS, "logs", f"deploy/{PROBER}").stdout
        results = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert {r["result"] for r in results} == {"success", "failure"}
        for secret in (old_token, _token(installed, session_name)):
            assert secret not in logs

        # SIGTERM (Deployment deleted): the prober closes the lab session it opened
        installed.kubectl("-n", LABS, "delete", "deployment", PROBER, "--wait=true")
        wait_for(
            lambda: (
                not installed.get_json(
                    "-n", LABS, "pods", "-l", f"app.kubernetes.io/name={PROBER}"
                )["items"]
            ),
            timeout=90,
            what="the prober pod gone (it got SIGTERM and exited)",
        )
        assert _lab_sessions(installed, session_name) == []
    finally:
        installed.kubectl(
            "-n", LABS, "delete", "deployment,service,serviceaccount,role,rolebinding", PROBER,
            "--ignore-not-found", "--wait=false", check=False,
        )  # fmt: skip


def _spawn_sessions(cluster: LocalCluster) -> list[str]:
    items = cluster.get_json("-n", LABS, "ks", "-l", SPAWN_SELECTOR)["items"]
    return [item["metadata"]["name"] for item in items]


def _gone(cluster: LocalCluster, name: str) -> None:
    found = cluster.kubectl("-n", LABS, "get", "ks", name, "--ignore-not-found", "-o", "name")
    assert found.stdout.strip() == "", f"ks/{name} left behind"
    assert children(cluster, name) == {}, f"children of {name} left behind"


@contextmanager
def spawn_prober(
    cluster: LocalCluster, tmp_path: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    out, err = tmp_path / "spawn.out", tmp_path / "spawn.err"
    with out.open("w") as o, err.open("w") as e:
        process = subprocess.Popen(
            [CLI, "probe", "--spawn", "-n", LABS, "--user", "spawner", *args],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_env(cluster),
        )
    try:
        yield process, out, err
    finally:
        stop_process_tree(process, grace=120)


def _created_names(err: Path) -> list[str]:
    prefix = f"creating KernelSession {LABS}/"
    lines = err.read_text().splitlines()
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


def _created_name(err: Path) -> str:
    names = wait_for(
        lambda: _created_names(err), timeout=60, what="the spawn probe naming its session"
    )
    return names[0]


def test_spawn_probe_creates_runs_and_deletes(
    installed: LocalCluster, operator: object, tmp_path: Path
) -> None:
    result = subprocess.run(
        [CLI, "probe", "--spawn", "-n", LABS, "--user", "spawner", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(installed),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["probe"] == "spawn"
    assert report["result"] == "success", report
    steps = {"create", "ready", "login", "session_create", "websocket_open", "execute", "delete"}
    assert steps <= set(report["seconds"]), report["seconds"]
    name = report["target"].split("/", 1)[1]
    assert name.startswith("probe-")
    _gone(installed, name)  # deleted, children confirmed gone, before the command exited
    assert name not in _spawn_sessions(installed)


def test_spawn_probe_as_the_sample_service_account(
    installed: LocalCluster, operator: object, sa_kubeconfig: Any
) -> None:
    """The RBAC of manifests/samples/spawn-prober.yaml is enough for a whole spawn probe."""
    docs = yaml.safe_load_all((SAMPLE.parent / "spawn-prober.yaml").read_text())
    rbac = [d for d in docs if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    kubeconfig = sa_kubeconfig(rbac, LABS, "kernelsession-spawn-prober")
    env = {**_env(installed), "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run(
        [CLI, "probe", "--spawn", "-n", LABS, "--user", "spawner", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["result"] == "success", report
    _gone(installed, report["target"].split("/", 1)[1])


def test_spawn_probe_sigint_mid_spawn_leaves_no_session(
    installed: LocalCluster, operator: object, tmp_path: Path
) -> None:
    with spawn_prober(installed, tmp_path) as (process, out, err):
        name = _created_name(err)
        try:
            wait_for(
                lambda: installed.get_json("-n", LABS, f"ks/{name}"),
                timeout=30,
                what=f"ks/{name} created",
            )
            process.send_signal(signal.SIGINT)  # mid-spawn: created, not yet probed
            assert process.wait(120) == 130, err.read_text()
            assert out.read_text() == "", "no result: it was interrupted"  # not a late success
            assert "was deleted" in err.read_text()
            _gone(installed, name)  # gone before the command exited
        finally:
            installed.kubectl("-n", LABS, "delete", "ks", name, "--ignore-not-found", check=False)


def test_spawn_prober_metrics_and_clean_stop(
    installed: LocalCluster, operator: object, tmp_path: Path
) -> None:
    args = ("--every", "1", "--metrics-port", "0", "--metrics-address", "127.0.0.1", "--json")
    with spawn_prober(installed, tmp_path, *args) as (process, out, err):

        def port() -> int:
            assert process.poll() is None, err.read_text()
            for line in err.read_text().splitlines():
                if line.startswith("serving metrics on "):
                    return int(line.rsplit(":", 1)[1].split("/")[0])
            return 0

        url = f"http://127.0.0.1:{wait_for(port, timeout=30, what='metrics port')}/metrics"
        wait_for(
            lambda: (
                value(scrape(url), "kernelsession_spawn_total", result="success", reason="") >= 2
            ),
            timeout=400,
            what="2 successful spawn probes",
        )
        samples = scrape(url)
        assert value(samples, "kernelsession_spawn_seconds_count") >= 2
        assert value(samples, "kernelsession_spawn_delete_seconds_count") >= 2
        assert value(samples, "kernelsession_probe_up") == 1
        assert failures(samples, "kernelsession_spawn_total") == {}
        process.send_signal(signal.SIGTERM)  # likely mid-spawn: it still cleans up
        assert process.wait(120) == 0, err.read_text()
    names = _created_names(err)
    reported = [
        json.loads(line)["target"].split("/", 1)[1] for line in out.read_text().splitlines()
    ]
    assert set(reported) <= set(names)
    for name in names:
        _gone(installed, name)
    assert _spawn_sessions(installed) == []
