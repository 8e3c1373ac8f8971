"""Operator configuration: one frozen object built from environment variables and flags."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kernelsession.client.resources import DEFAULT_NAMESPACE, LAB_PORT

URLMode = Literal["service", "pod-ip"]
Rollout = Literal["never", "idle"]

ENV_PREFIX = "KERNELSESSION_"


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable."""


DEFAULT_INGRESS_PATH = "/labs/{namespace}/{name}/"
_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class IngressSettings:
    """An Ingress per session, routing ``path`` on ``host`` to the lab (whose base_url is
    that path), admitted by the lab's NetworkPolicy from the controller's pods."""

    controller_namespace: str
    """Namespace of the ingress controller's pods (the NetworkPolicy admits them)."""
    controller_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the controller's pods in that namespace (empty: every pod there)."""
    class_name: str = ""
    """``spec.ingressClassName`` (empty: the cluster's default IngressClass)."""
    host: str = ""
    """The rule's host (empty: any host)."""
    tls_secret: str = ""
    """A TLS Secret in each session's namespace (empty: no TLS section)."""
    path: str = DEFAULT_INGRESS_PATH
    """Path prefix template with ``{namespace}`` and ``{name}``; starts and ends with /."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Added to every Ingress (e.g. the controller's websocket timeouts)."""
    url: str = ""
    """Scheme, host and port users reach the controller at (default: from host and TLS)."""

    @property
    def external_base(self) -> str | None:
        """``scheme://host[:port]`` of the external URL; None when nothing names it."""
        if self.url:
            return self.url.rstrip("/")
        if self.host and not self.host.startswith("*"):
            return f"{'https' if self.tls_secret else 'http'}://{self.host}"
        return None


@dataclass(frozen=True)
class Settings:
    """Everything the operator can be told; defaults suit a real cluster."""

    namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)
    """Namespaces to watch; empty means cluster-wide."""
    default_image: str = "jupyter/base-notebook:latest"
    default_resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "2Gi"},
        }
    )
    default_idle_timeout: int = 3600
    default_max_age: int = 0
    default_start_timeout: int = 300
    url_mode: URLMode = "service"
    cluster_domain: str = "cluster.local"
    lab_port: int = LAB_PORT
    lab_extra_args: tuple[str, ...] = ()
    """Appended to the lab's ``jupyter server`` arguments (e.g. for a local kubelet)."""
    run_as_user: int = 1000
    run_as_group: int = 100
    cull_interval: float = 30.0
    """Seconds between activity checks of a Ready lab that can turn cullable at any moment
    (a client connected to an idle kernel) or that the rollout policy replaces once idle.
    Any other Ready lab is asked when its culling falls due (CullingSoon, then the cull)
    and at least every ``max(cull_interval, activity_resolution)`` seconds."""
    cull_warning: int = 300
    """Seconds before culling at which a CullingSoon event is posted."""
    cull_connected: bool = False
    """Whether an idle kernel with open connections may be culled (jupyter-server's default: no)."""
    starting_interval: float = 1.0
    """Seconds between checks of a lab whose pod is Ready but whose API does not answer
    (with the token, through its Service) yet."""
    starting_recheck: float = 30.0
    """Seconds between checks of a starting lab whose pod is not Ready: the pod's own
    events (scheduled, started, Ready, restarted) wake its session at once; this is the
    fallback should one be missed, backing off to the pod's age (at most
    ``labgates.RECHECK_GROWTH`` times this) for a slow start (the start timeout and the
    unschedulable grace are looked at when they fall due)."""
    status_hold: float = 5.0
    """Seconds a starting lab's progress status (Pending/Creating, Pending/PodPending,
    Starting/LabStarting) stays before the next progress step is written, and how old a
    new session is before its first status: a lab that answers sooner gets one status
    write for its start, Ready. Outcomes and anything a user must act on are written at
    once; 0 writes every step."""
    activity_resolution: float = 300.0
    """Seconds ``status.lastActivity`` may lag the lab's own last activity: a lab in use
    costs a status write at most this often, not every cull interval (culling reads the
    lab itself, never this field); 0 writes every change."""
    probe_timeout: float = 5.0
    unschedulable_grace: int = 120
    """Seconds an unschedulable lab waits for capacity (cluster autoscalers) before Failed."""
    home_interval: float = 5.0
    """Seconds between checks of a home volume that is not bound yet."""
    max_concurrent_passes: int = 32
    """Reconcile passes (API calls, lab probes) running at once across all sessions; a
    free slot goes to the oldest session waiting (``passslots``)."""
    leader_election: bool = False
    """Only the holder of the Lease acts; the others stand by (more than one replica)."""
    leader_identity: str = ""
    """This replica's name in the Lease (the pod name in a cluster)."""
    lease_name: str = "kernelsession-operator"
    lease_namespace: str = "kernelsession-system"
    lease_duration: float = 10.0
    """Seconds a Lease stays valid without renewal: the takeover time after a crash."""
    api_timeout: float = 15.0
    """Seconds one Kubernetes API request may take in all (the Lease's are shorter)."""
    api_qps: float = 50.0
    """Kubernetes API requests a second, on average, this replica sends at most (the
    Lease's and kopf's watches excepted); 0: no limit."""
    api_burst: int = 100
    """Requests sent at once before ``api_qps`` holds them back."""
    operator_namespace: str = "kernelsession-system"
    metrics_port: int = 9090
    health_port: int = 8080
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    ingress: IngressSettings | None = None
    """An Ingress per session (``KERNELSESSION_INGRESS=true``); None: no Ingress."""
    rollout: Rollout = "never"
    """When a running lab gets the operator's new template: ``never`` (at its next start)
    or ``idle`` (also when no kernel is busy and no client is connected)."""
    rollout_max: int = 1
    """Labs replaced by the ``idle`` rollout at a time."""
    resync_interval: float = 60.0
    """Seconds between checks that every session this replica knows still exists (a
    deletion missed in a watch gap is forgotten then)."""
    profile_namespace_prefix: str = "lab-"
    """A LabProfile's namespace is this prefix and the owner's name, unless it names one
    (``KERNELSESSION_NAMESPACES`` must cover it, e.g. ``labs,lab-*``)."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must be > 0, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")


def _json_strings(env: Mapping[str, str], name: str) -> dict[str, str]:
    raw = env.get(ENV_PREFIX + name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name} is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{ENV_PREFIX}{name} must be a JSON object of strings")
    return value


def _labels(env: Mapping[str, str], name: str) -> dict[str, str]:
    """``key=value,key=value`` (a label selector's equality terms)."""
    raw = env.get(ENV_PREFIX + name) or ""
    labels: dict[str, str] = {}
    for term in (t.strip() for t in raw.split(",")):
        if not term:
            continue
        key, sep, value = term.partition("=")
        if not sep or not _LABEL_KEY.match(key.strip()):
            raise ConfigError(f"{ENV_PREFIX}{name} must be key=value[,key=value], got {raw!r}")
        labels[key.strip()] = value.strip()
    return labels


def ingress_from_env(env: Mapping[str, str]) -> IngressSettings | None:
    """The Ingress settings (None unless ``KERNELSESSION_INGRESS`` is true).

    Raises:
        ConfigError: a variable is malformed or missing (the message names it).
    """
    if not _bool(env, "INGRESS", False):
        return None
    namespace = env.get(ENV_PREFIX + "INGRESS_CONTROLLER_NAMESPACE", "").strip()
    if not namespace:
        raise ConfigError(
            f"{ENV_PREFIX}INGRESS_CONTROLLER_NAMESPACE must name the ingress controller's "
            "namespace when KERNELSESSION_INGRESS is true (the labs' NetworkPolicy admits it)"
        )
    host = env.get(ENV_PREFIX + "INGRESS_HOST", "").strip().lower()
    if host and not _DNS_NAME.match(host):
        raise ConfigError(f"{ENV_PREFIX}INGRESS_HOST must be a DNS name, got {host!r}")
    path = env.get(ENV_PREFIX + "INGRESS_PATH", "").strip() or DEFAULT_INGRESS_PATH
    if (
        not path.startswith("/")
        or not path.endswith("/")
        or "{name}" not in path
        or "{namespace}" not in path
    ):
        raise ConfigError(
            f"{ENV_PREFIX}INGRESS_PATH must start and end with / and contain {{namespace}} "
            f"and {{name}} (one path per session), got {path!r}"
        )
    try:
        path.format(namespace="ns", name="n")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"{ENV_PREFIX}INGRESS_PATH may use only {{namespace}} and {{name}}, got {path!r}"
        ) from None
    url = env.get(ENV_PREFIX + "INGRESS_URL", "").strip()
    if url and not re.match(r"^https?://[^/?#]+/?$", url):
        raise ConfigError(
            f"{ENV_PREFIX}INGRESS_URL must be scheme://host[:port] (no path), got {url!r}"
        )
    return IngressSettings(
        controller_namespace=namespace,
        controller_labels=_labels(env, "INGRESS_CONTROLLER_LABELS"),
        class_name=env.get(ENV_PREFIX + "INGRESS_CLASS", "").strip(),
        host=host,
        tls_secret=env.get(ENV_PREFIX + "INGRESS_TLS_SECRET", "").strip(),
        path=path,
        annotations=_json_strings(env, "INGRESS_ANNOTATIONS"),
        url=url,
    )


def from_env(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from ``KERNELSESSION_*`` variables; ``overrides`` (command-line
    flags, keyed by variable name without the prefix) win over the environment.

    Raises:
        ConfigError: a variable is malformed (the message names it).
    """
    env = dict(os.environ if env is None else env)
    env.update({ENV_PREFIX + k: v for k, v in (overrides or {}).items()})
    d = Settings()
    ns_raw = env.get(ENV_PREFIX + "NAMESPACES")
    if ns_raw is None:
        namespaces = d.namespaces
    elif ns_raw.strip() in ("", "*"):
        namespaces = ()
    else:
        namespaces = tuple(n.strip() for n in ns_raw.split(",") if n.strip())
    resources: Mapping[str, Any] = d.default_resources
    res_raw = env.get(ENV_PREFIX + "DEFAULT_RESOURCES")
    if res_raw:
        try:
            resources = json.loads(res_raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_PREFIX}DEFAULT_RESOURCES is not JSON: {exc}") from None
        if not isinstance(resources, dict) or set(resources) - {"requests", "limits"}:
            raise ConfigError(
                f"{ENV_PREFIX}DEFAULT_RESOURCES must be an object with requests/limits"
            )
    url_mode = env.get(ENV_PREFIX + "URL_MODE", "auto")
    if url_mode == "auto":
        url_mode = "service" if env.get("KUBERNETES_SERVICE_HOST") else "pod-ip"
    if url_mode not in ("service", "pod-ip"):
        raise ConfigError(f"{ENV_PREFIX}URL_MODE must be auto, service or pod-ip, got {url_mode!r}")
    rollout = env.get(ENV_PREFIX + "ROLLOUT", "") or d.rollout
    if rollout not in ("never", "idle"):
        raise ConfigError(f"{ENV_PREFIX}ROLLOUT must be never or idle, got {rollout!r}")
    log_format = env.get(ENV_PREFIX + "LOG_FORMAT", d.log_format)
    if log_format not in ("json", "console"):
        raise ConfigError(f"{ENV_PREFIX}LOG_FORMAT must be json or console, got {log_format!r}")
    prefix = env.get(ENV_PREFIX + "PROFILE_NAMESPACE_PREFIX", d.profile_namespace_prefix)
    if not re.match(r"^[a-z0-9][-a-z0-9]{0,19}$", prefix):
        raise ConfigError(
            f"{ENV_PREFIX}PROFILE_NAMESPACE_PREFIX must be 1-20 lower-case letters, digits "
            f"or '-', starting with a letter or digit, got {prefix!r}"
        )
    return Settings(
        namespaces=namespaces,
        profile_namespace_prefix=prefix,
        default_image=env.get(ENV_PREFIX + "DEFAULT_IMAGE", d.default_image),
        default_resources=resources,
        default_idle_timeout=_int(env, "DEFAULT_IDLE_TIMEOUT", d.default_idle_timeout),
        default_max_age=_int(env, "DEFAULT_MAX_AGE", d.default_max_age),
        default_start_timeout=_int(env, "DEFAULT_START_TIMEOUT", d.default_start_timeout, 1),
        url_mode=url_mode,  # type: ignore[arg-type]
        cluster_domain=env.get(ENV_PREFIX + "CLUSTER_DOMAIN", d.cluster_domain),
        lab_extra_args=tuple(shlex.split(env.get(ENV_PREFIX + "LAB_EXTRA_ARGS", ""))),
        run_as_user=_int(env, "RUN_AS_USER", d.run_as_user, 1),
        run_as_group=_int(env, "RUN_AS_GROUP", d.run_as_group),
        cull_interval=_float(env, "CULL_INTERVAL", d.cull_interval),
        cull_warning=_int(env, "CULL_WARNING", d.cull_warning),
        cull_connected=_bool(env, "CULL_CONNECTED", d.cull_connected),
        starting_interval=_float(env, "STARTING_INTERVAL", d.starting_interval),
        starting_recheck=_float(env, "STARTING_RECHECK", d.starting_recheck),
        status_hold=_float(env, "STATUS_HOLD", d.status_hold),
        activity_resolution=_float(env, "ACTIVITY_RESOLUTION", d.activity_resolution),
        probe_timeout=_float(env, "PROBE_TIMEOUT", d.probe_timeout),
        unschedulable_grace=_int(env, "UNSCHEDULABLE_GRACE", d.unschedulable_grace),
        home_interval=_float(env, "HOME_INTERVAL", d.home_interval),
        max_concurrent_passes=_int(env, "MAX_CONCURRENT_PASSES", d.max_concurrent_passes, 1),
        leader_election=_bool(env, "LEADER_ELECTION", d.leader_election),
        leader_identity=env.get(ENV_PREFIX + "LEADER_IDENTITY")
        or env.get("POD_NAME")
        or socket.gethostname(),
        lease_name=env.get(ENV_PREFIX + "LEASE_NAME", d.lease_name),
        lease_namespace=env.get(ENV_PREFIX + "LEASE_NAMESPACE")
        or env.get(ENV_PREFIX + "OPERATOR_NAMESPACE", d.lease_namespace),
        lease_duration=_float(env, "LEASE_DURATION", d.lease_duration),
        api_timeout=_float(env, "API_TIMEOUT", d.api_timeout),
        api_qps=0.0
        if env.get(ENV_PREFIX + "API_QPS", "").strip() in ("0", "0.0")
        else _float(env, "API_QPS", d.api_qps),
        api_burst=_int(env, "API_BURST", d.api_burst, 1),
        operator_namespace=env.get(ENV_PREFIX + "OPERATOR_NAMESPACE", d.operator_namespace),
        metrics_port=_int(env, "METRICS_PORT", d.metrics_port),
        health_port=_int(env, "HEALTH_PORT", d.health_port),
        log_level=env.get(ENV_PREFIX + "LOG_LEVEL", d.log_level).upper(),
        log_format=log_format,  # type: ignore[arg-type]
        ingress=ingress_from_env(env),
        rollout=rollout,  # type: ignore[arg-type]
        rollout_max=_int(env, "ROLLOUT_MAX", d.rollout_max, 1),
        resync_interval=_float(env, "RESYNC_INTERVAL", d.resync_interval),
    )
