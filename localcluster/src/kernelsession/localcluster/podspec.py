"""Pure helpers interpreting a pod spec the way a kubelet does (no I/O).

- :func:`expand`: Kubernetes ``$(VAR)`` expansion (``$$`` escapes, unknown references kept).
- :func:`referenced_objects` / :func:`resolve_env`: a container's environment from values,
  ``secretKeyRef``, ``configMapKeyRef``, ``envFrom`` and the downward API (``fieldRef``).
- :func:`parse_probe`: a probe object into a :class:`ProbeSpec` with Kubernetes defaults.
- :func:`unschedulable_reason`: whether a pod's nodeSelector/affinity/tolerations fit a node.

Pods are handled as plain JSON dicts (the API's camelCase field names).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


class EnvConfigError(Exception):
    """A non-optional env reference cannot be resolved (kubelet: CreateContainerConfigError)."""


# -- $(VAR) expansion (port of k8s third_party/forked/golang/expansion) ------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references in ``text`` from ``env`` like Kubernetes does.

    ``$$`` yields a literal ``$``; references to undefined names and unterminated
    ``$(`` are left as written.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


# -- environment --------------------------------------------------------------------


@dataclass(frozen=True)
class References:
    """Secrets and ConfigMaps (by name) a container's env refers to."""

    secrets: frozenset[str] = frozenset()
    configmaps: frozenset[str] = frozenset()


def referenced_objects(container: JSON) -> References:
    """The Secret and ConfigMap names referenced by ``env`` and ``envFrom``."""
    secrets: set[str] = set()
    configmaps: set[str] = set()
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            secrets.add(source["secretKeyRef"].get("name", ""))
        if "configMapKeyRef" in source:
            configmaps.add(source["configMapKeyRef"].get("name", ""))
    for src in container.get("envFrom") or []:
        if "secretRef" in src:
            secrets.add(src["secretRef"].get("name", ""))
        if "configMapRef" in src:
            configmaps.add(src["configMapRef"].get("name", ""))
    return References(frozenset(secrets), frozenset(configmaps))


def secret_data(secret: JSON) -> dict[str, str]:
    """A Secret's ``data`` (base64) and ``stringData`` decoded to text."""
    out = {
        k: base64.b64decode(v).decode(errors="replace")
        for k, v in (secret.get("data") or {}).items()
    }
    out.update(secret.get("stringData") or {})
    return out


def configmap_data(configmap: JSON) -> dict[str, str]:
    """A ConfigMap's ``data`` (``binaryData`` is ignored, as for env vars in Kubernetes)."""
    return dict(configmap.get("data") or {})


def field_value(pod: JSON, path: str) -> str:
    """The downward-API value of ``fieldRef.fieldPath`` for ``pod``.

    Raises EnvConfigError for an unsupported path.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, key in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(key) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise EnvConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resolve_env(
    container: JSON,
    pod: JSON,
    *,
    secrets: Mapping[str, Mapping[str, str] | None],
    configmaps: Mapping[str, Mapping[str, str] | None],
) -> dict[str, str]:
    """The container's environment (``envFrom`` first, then ``env`` in order).

    ``secrets``/``configmaps`` map each referenced name to its decoded data, or None when
    the object does not exist. Values are expanded with ``$(VAR)`` from variables defined
    earlier. Raises EnvConfigError (with a kubelet-like message) for a missing
    non-optional Secret/ConfigMap or key.
    """
    ns = (pod.get("metadata") or {}).get("namespace", "")
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        for kind, ref_key, table in (
            ("secret", "secretRef", secrets),
            ("configmap", "configMapRef", configmaps),
        ):
            if ref_key not in src:
                continue
            ref = src[ref_key]
            data = table.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvConfigError(f'{kind} "{ref.get("name")}" not found')
            for k, v in data.items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value") or "", env)
            continue
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            is_secret = "secretKeyRef" in source
            ref = source["secretKeyRef" if is_secret else "configMapKeyRef"]
            kind = "Secret" if is_secret else "ConfigMap"
            data = (secrets if is_secret else configmaps).get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise EnvConfigError(
                    f"couldn't find key {ref['key']} in {kind} {ns}/{ref.get('name')}"
                )
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in source:
            env[name] = _resource_value(container, source["resourceFieldRef"])
        else:
            raise EnvConfigError(f"unsupported valueFrom for env var {name}")
    return env


def _resource_value(container: JSON, ref: JSON) -> str:
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    return str(value if value is not None else "0")


def command_line(container: JSON, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded. Raises EnvConfigError when there is
    no ``command`` (images are ignored, so there is no image entrypoint to fall back to)."""
    argv = [expand(a, env) for a in (container.get("command") or [])]
    if not argv:
        raise EnvConfigError(
            "container has no command: the local kubelet ignores images, so "
            "spec.containers[].command is required"
        )
    return argv + [expand(a, env) for a in (container.get("args") or [])]


# -- probes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """A probe with Kubernetes defaults applied."""

    kind: str  # "http", "tcp" or "exec"
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    termination_grace: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The URL an httpGet probe requests."""
        path = self.path if self.path.startswith("/") else "/" + self.path
        return f"{self.scheme.lower()}://{self.host}:{self.port}{path}"


class ProbeError(ValueError):
    """A probe definition cannot be executed (e.g. unknown named port)."""


def resolve_port(port: int | str, container: JSON) -> int:
    """A probe's port as a number; named ports are looked up in the container's ports.

    Raises ProbeError when a named port does not exist.
    """
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ProbeError(f"named port {port!r} not found in container ports")


def parse_probe(probe: JSON, container: JSON, pod_ip: str) -> ProbeSpec:
    """Turn a pod-spec probe into a :class:`ProbeSpec`; ``pod_ip`` is the default host.

    Raises ProbeError for an unsupported or incomplete probe (e.g. gRPC).
    """
    common: dict[str, Any] = {
        "initial_delay": float(probe.get("initialDelaySeconds") or 0),
        "period": float(probe.get("periodSeconds") or 10),
        "timeout": float(probe.get("timeoutSeconds") or 1),
        "success_threshold": int(probe.get("successThreshold") or 1),
        "failure_threshold": int(probe.get("failureThreshold") or 3),
        "termination_grace": (
            float(probe["terminationGracePeriodSeconds"])
            if probe.get("terminationGracePeriodSeconds") is not None
            else None
        ),
    }
    if "httpGet" in probe:
        h = probe["httpGet"]
        return ProbeSpec(
            kind="http",
            host=h.get("host") or pod_ip,
            port=resolve_port(h["port"], container),
            path=h.get("path") or "/",
            scheme=(h.get("scheme") or "HTTP").upper(),
            headers=tuple((x["name"], x["value"]) for x in h.get("httpHeaders") or []),
            **common,
        )
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return ProbeSpec(
            kind="tcp",
            host=t.get("host") or pod_ip,
            port=resolve_port(t["port"], container),
            **common,
        )
    if "exec" in probe:
        return ProbeSpec(kind="exec", command=tuple(probe["exec"].get("command") or []), **common)
    raise ProbeError(f"unsupported probe handler: {sorted(probe)}")


# -- scheduling ---------------------------------------------------------------------


def _match_expression(expr: JSON, value: str | None) -> bool:
    op = expr.get("operator")
    values = list(expr.get("values") or [])
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            a, b = int(value), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def _term_matches(term: JSON, labels: Mapping[str, str], node_name: str) -> bool:
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term matches no objects
    if not all(_match_expression(e, labels.get(e.get("key", ""))) for e in exprs):
        return False
    return all(
        _match_expression(f, node_name if f.get("key") == "metadata.name" else None) for f in fields
    )


def unschedulable_reason(
    pod: JSON,
    *,
    node_name: str,
    node_labels: Mapping[str, str],
    node_taints: list[JSON] | None = None,
) -> str | None:
    """Why ``pod`` cannot run on the node (scheduler-like message), or None if it fits."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    fits = all(node_labels.get(k) == v for k, v in selector.items())
    if fits and affinity:
        terms = affinity.get("nodeSelectorTerms") or []
        fits = any(_term_matches(t, node_labels, node_name) for t in terms)
    if not fits:
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    tolerations = spec.get("tolerations") or []
    for taint in node_taints or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return (
                "0/1 nodes are available: 1 node(s) had untolerated taint "
                f"{{{taint.get('key')}: {taint.get('value', '')}}}."
            )
    return None


def _tolerates(toleration: JSON, taint: JSON) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    key = toleration.get("key")
    if key and key != taint.get("key"):
        return False
    if toleration.get("operator") == "Exists":
        return True
    return bool(key) and toleration.get("value", "") == taint.get("value", "")
