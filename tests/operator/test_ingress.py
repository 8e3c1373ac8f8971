"""An Ingress per session, as a platform configures it (``KERNELSESSION_INGRESS_*``): the
route and the lab's base_url agree, the controller is admitted by the NetworkPolicy, the
external URL is in status, an edited route is put back, and turning Ingresses off removes
them and serves the lab at ``/`` again. The operator's calls are read from the audit log:
each succeeds under its own RBAC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import (
    INGRESS_ENV,
    INGRESS_HOST,
    LABS,
    OPERATOR_ENV,
    apply_session,
    children,
    events_for,
    get_ks,
    lab_path,
    wait_for,
    wait_phase,
)

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator, operator_account

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CONTROLLER_NS = INGRESS_ENV["KERNELSESSION_INGRESS_CONTROLLER_NAMESPACE"]


def _ingress(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl("-n", LABS, "get", "ingress", name, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _policy(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", LABS, "networkpolicy", f"{name}-lab"))


def _admits_controller(policy: dict[str, Any]) -> bool:
    peers = policy["spec"]["ingress"][0]["from"]
    wanted = {"kubernetes.io/metadata.name": CONTROLLER_NS}
    return any((p.get("namespaceSelector") or {}).get("matchLabels") == wanted for p in peers)


def _operator_calls(cluster: LocalCluster, resource: str, verb: str, name: str) -> list[int]:
    """Response codes of the operator's ``verb`` calls on ``resource``/``name`` in labs."""
    log = cluster.audit_log
    assert log is not None, "the shared cluster runs with audit=True"
    return [
        e.code or 0
        for e in audit.read(log, user=operator_account())
        if (e.resource, e.verb, e.namespace, e.name) == (resource, verb, LABS, name)
    ]


async def test_session_route_matches_its_lab(
    installed: LocalCluster, operator: InClusterOperator, ks: KernelSessionClient, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "ingrid"})
    status = wait_phase(installed, session_name, "Ready", timeout=120)
    path = lab_path(session_name)
    assert status["url"] == f"http://{session_name}.{LABS}.svc.cluster.local:8888{path}"
    assert status["externalURL"] == f"http://{INGRESS_HOST}{path}"
    wide = installed.kubectl("-n", LABS, "get", "ks", session_name, "-o", "wide").stdout
    assert "EXTERNAL URL" in wide.splitlines()[0]
    assert f"http://{INGRESS_HOST}{path}" in wide

    ing = _ingress(installed, session_name)
    assert ing is not None
    uid = get_ks(installed, session_name)["metadata"]["uid"]
    (ref,) = ing["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("KernelSession", uid, True)
    labels = ing["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "kernelsession-operator"
    assert labels["kernelsession.dev/session"] == session_name
    assert labels["kernelsession.dev/user"] == "ingrid"
    assert ing["spec"]["ingressClassName"] == "traefik"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == INGRESS_HOST
    (route,) = rule["http"]["paths"]
    assert (route["path"], route["pathType"]) == (path, "Prefix")
    assert route["backend"]["service"] == {"name": session_name, "port": {"name": "http"}}
    assert _admits_controller(_policy(installed, session_name))

    # The lab really serves under the path: the client follows status.url.
    async with await ks.lab_session(session_name) as lab:
        assert await lab.run_python("print(6 * 7)") == "42\n"
    pod = installed.get_json("-n", LABS, "pod", status["podName"])
    args = pod["spec"]["containers"][0]["args"]
    assert f"--ServerApp.base_url={path}" in args


def test_edited_route_and_policy_are_put_back(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "ingrid"})
    wait_phase(installed, session_name, "Ready", timeout=120)
    good = _ingress(installed, session_name)
    assert good is not None
    installed.kubectl(
        "-n",
        LABS,
        "patch",
        "ingress",
        session_name,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "rules": [{"host": "elsewhere.test", "http": good["spec"]["rules"][0]["http"]}],
                    "defaultBackend": {"service": {"name": "other", "port": {"number": 80}}},
                }
            }
        ),
    )
    policy = _policy(installed, session_name)
    peers = [p for p in policy["spec"]["ingress"][0]["from"] if not _is_controller(p)]
    installed.kubectl(
        "-n",
        LABS,
        "patch",
        "networkpolicy",
        f"{session_name}-lab",
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/ingress/0/from", "value": peers}]),
    )

    def restored() -> bool:
        now = _ingress(installed, session_name)
        return (
            now is not None
            and now["spec"] == good["spec"]
            and _admits_controller(_policy(installed, session_name))
        )

    wait_for(restored, timeout=30, what="Ingress and NetworkPolicy put back")
    assert "Restored" in {e["reason"] for e in events_for(installed, session_name)}
    for resource in ("ingresses", "networkpolicies"):
        name = session_name if resource == "ingresses" else f"{session_name}-lab"
        codes = _operator_calls(installed, resource, "patch", name)
        assert codes, f"no patch of {resource} in the audit log"
        assert all(c < 400 or c == 409 for c in codes), codes


def _is_controller(peer: dict[str, Any]) -> bool:
    labels = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
    return bool(labels.get("kubernetes.io/metadata.name") == CONTROLLER_NS)


def test_turning_ingresses_off_and_on(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """A settings change never restarts a running lab: turning Ingresses off deletes the
    route at once, the lab keeps serving under its old path (UpToDate False) until its
    next start (here: a resume), which serves it at ``/``; on again, the same."""
    apply_session(installed, session_name, {"user": "ingrid"})
    first = wait_phase(installed, session_name, "Ready", timeout=120)
    assert _ingress(installed, session_name) is not None
    routed_url = first["url"]
    assert routed_url.endswith(lab_path(session_name))
    (routed_pod,) = children(installed, session_name)["Pod"]
    plain = {k: v for k, v in OPERATOR_ENV.items() if k not in INGRESS_ENV}

    def resume(value: str) -> None:
        installed.kubectl(
            "-n",
            LABS,
            "annotate",
            "ks",
            session_name,
            f"kernelsession.dev/resume={value}",
            "--overwrite",
        )

    def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
        return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})

    try:
        operator.reconfigure(plain)
        wait_for(
            lambda: _ingress(installed, session_name) is None,
            timeout=60,
            what="the Ingress deleted",
        )

        def kept_behind() -> dict[str, Any] | None:
            status = get_ks(installed, session_name).get("status") or {}
            behind = condition(status, "UpToDate").get("reason") == "TemplateChanged"
            return status if behind and status.get("phase") == "Ready" else None

        status = wait_for(kept_behind, timeout=60, what="the running lab kept, not up to date")
        assert status["url"] == routed_url  # it still serves under its old path
        assert "externalURL" not in status  # but no route leads there any more
        (pod,) = children(installed, session_name)["Pod"]
        assert pod["metadata"]["uid"] == routed_pod["metadata"]["uid"]
        assert not _admits_controller(_policy(installed, session_name))
        codes = _operator_calls(installed, "ingresses", "delete", session_name)
        assert codes
        assert all(c < 400 for c in codes), codes

        resume("off")

        def served_at_root() -> dict[str, Any] | None:
            status = get_ks(installed, session_name).get("status") or {}
            url = f"http://{session_name}.{LABS}.svc.cluster.local:8888/"
            ok = status.get("phase") == "Ready" and status.get("url") == url
            return status if ok else None

        status = wait_for(served_at_root, timeout=120, what="the lab Ready at / after a resume")
        assert condition(status, "UpToDate").get("status") == "True"
    finally:
        operator.reconfigure(OPERATOR_ENV)
    external = f"http://{INGRESS_HOST}{lab_path(session_name)}"
    wait_for(
        lambda: _ingress(installed, session_name) is not None,
        timeout=60,
        what="the Ingress made again",
    )
    resume("on")

    def routed_again() -> bool:
        status = get_ks(installed, session_name).get("status") or {}
        return status.get("phase") == "Ready" and status.get("externalURL") == external

    wait_for(routed_again, timeout=120, what="the lab Ready behind its route again")
    assert _admits_controller(_policy(installed, session_name))
