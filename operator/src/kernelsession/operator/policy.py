"""The tenancy rules for a session's spec, pure: what the admission policy in
``manifests/admission.yaml`` checks at ``kubectl apply``, checked again by the operator
before it creates a lab pod (a cluster without the policy, objects made before it).

The namespace's ``kernelsession-policy`` ConfigMap parametrises the rules (see
docs/tenancy-admission.md); :func:`parse` reads its ``data``. :func:`references` lists
what a spec points at (Secrets, ConfigMaps, claims) so that the operator can look them
up; :func:`violations` says, with the field's path and the rule, what breaks a rule.
The same table of cases (tests/policy_cases.yaml) runs through this module and through
the admission policy on a real API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from kernelsession.operator import naming

CONFIGMAP = "kernelsession-policy"
"""The per-namespace ConfigMap holding the rules' parameters."""
USER_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""A valid ``spec.user`` (the CRD's pattern; at most 63 characters)."""
VOLUME_TYPES = (
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
)
PROJECTED_SOURCES = ("configMap", "secret", "downwardAPI")
RESERVED_LABEL_PREFIX = f"{naming.GROUP}/"
TOKEN_SUFFIX = "-token"
BOUNDED = ("cpu", "memory")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


class PolicyConfigError(ValueError):
    """The ConfigMap holds a value the rules cannot use; the message names the key."""


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1e3``, 2) as a number.

    Raises:
        ValueError: not a quantity.
    """
    text = str(value).strip()
    found = _QUANTITY.match(text)
    if not found:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = found.group(1), found.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {text!r}") from None
    if suffix[:1] in ("e", "E"):
        return base * Decimal(10) ** int(suffix[1:])
    return base * _SUFFIX[suffix]


@dataclass(frozen=True)
class Toleration:
    """One allowed toleration: ``key=value:Effect``, ``key:Effect`` (Exists),
    ``key=value`` (Equal, any effect) or ``key`` (Exists, any effect)."""

    key: str
    value: str | None
    effect: str | None

    @classmethod
    def parse(cls, line: str) -> Toleration:
        rest, _, effect = line.partition(":")
        key, eq, value = rest.partition("=")
        return cls(key=key, value=value if eq else None, effect=effect or None)

    def allows(self, tol: Mapping[str, Any]) -> bool:
        op = tol.get("operator") or "Equal"
        if str(tol.get("key") or "") != self.key:
            return False
        if self.value is None:  # key:Effect, operator Exists
            if op != "Exists":
                return False
        elif op != "Equal" or str(tol.get("value") or "") != self.value:
            return False
        return self.effect is None or tol.get("effect") == self.effect


@dataclass(frozen=True)
class Policy:
    """The parameters of the rules in one namespace (defaults: the ConfigMap's absence)."""

    images: tuple[str, ...] | None = None
    """Allowed images (``*`` at the end: a prefix); None: any image."""
    secrets: frozenset[str] = frozenset()
    config_maps: frozenset[str] = frozenset()
    claims: frozenset[str] = frozenset()
    tolerations: tuple[Toleration, ...] = ()
    node_selector: frozenset[tuple[str, str]] = frozenset()
    max_cpu: Decimal | None = None
    max_memory: Decimal | None = None
    max_idle_timeout: int | None = None
    max_age: int | None = None
    culling_never_allowed: bool = False
    user_mapping: tuple[tuple[str, str], ...] = ()
    """``(stripSuffix|stripPrefix, text)`` in the ConfigMap's order."""
    owner: tuple[str, str] | None = None
    """``(User|Group, name)``: the LabProfile's owner, whose RoleBinding reads every
    Secret of the namespace (None: a namespace without a profile, such as ``labs``)."""

    def owner_reads(self, subjects: Iterable[str]) -> bool:
        """Whether the owner's RoleBinding already lets ``subjects`` read a lab's token:
        the owner themself, or anyone in a Group owner's shared namespace (its members
        open each other's labs there by design)."""
        if self.owner is None:
            return False
        kind, name = self.owner
        return kind == "Group" or name in subjects


def _lines(data: Mapping[str, str], key: str) -> list[str]:
    return [line.strip() for line in str(data.get(key) or "").splitlines() if line.strip()]


def _bound(data: Mapping[str, str], key: str) -> Decimal | None:
    if key not in data:
        return None
    try:
        return quantity(data[key])
    except ValueError:
        raise PolicyConfigError(f"{key}: {data[key]!r} is not a quantity") from None


def _seconds(data: Mapping[str, str], key: str) -> int | None:
    if key not in data:
        return None
    try:
        return int(str(data[key]).strip())
    except ValueError:
        raise PolicyConfigError(f"{key}: {data[key]!r} is not a whole number of seconds") from None


def parse(data: Mapping[str, str] | None) -> Policy:
    """The policy from the ConfigMap's ``data`` (None: no ConfigMap, the defaults).

    Raises:
        PolicyConfigError: a value is malformed (the message names the key).
    """
    data = data or {}
    mapping: list[tuple[str, str]] = []
    for line in _lines(data, "userMapping"):
        op, eq, text = line.partition("=")
        if op not in ("stripSuffix", "stripPrefix") or not eq or not text:
            raise PolicyConfigError(
                f"userMapping: {line!r} is not stripSuffix=TEXT or stripPrefix=TEXT"
            )
        mapping.append((op, text))
    selector = set()
    for line in _lines(data, "nodeSelector"):
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise PolicyConfigError(f"nodeSelector: {line!r} is not key=value")
        selector.add((key, value))
    return Policy(
        images=tuple(_lines(data, "images")) if "images" in data else None,
        secrets=frozenset(_lines(data, "secrets")),
        config_maps=frozenset(_lines(data, "configMaps")),
        claims=frozenset(_lines(data, "claims")),
        tolerations=tuple(Toleration.parse(line) for line in _lines(data, "tolerations")),
        node_selector=frozenset(selector),
        max_cpu=_bound(data, "maxCPU"),
        max_memory=_bound(data, "maxMemory"),
        max_idle_timeout=_seconds(data, "maxIdleTimeoutSeconds"),
        max_age=_seconds(data, "maxAgeSeconds"),
        culling_never_allowed=str(data.get("cullingNeverAllowed", "")).strip() == "true",
        user_mapping=tuple(mapping),
        owner=_owner(data),
    )


def _owner(data: Mapping[str, str]) -> tuple[str, str] | None:
    if "owner" not in data:
        return None
    kind, _, name = str(data["owner"]).strip().partition(" ")
    if kind not in ("User", "Group") or not name.strip():
        raise PolicyConfigError(f"owner: {data['owner']!r} is not 'User NAME' or 'Group NAME'")
    return kind, name.strip()


def valid_user(name: str) -> bool:
    return len(name) <= 63 and USER_PATTERN.match(name) is not None


def map_user(username: str, policy: Policy) -> str | None:
    """The ``spec.user`` a Kubernetes user name stands for: itself when valid, else what
    the first ``userMapping`` line that applies makes of it, when that is valid; else
    None."""
    if valid_user(username):
        return username
    for op, text in policy.user_mapping:
        if op == "stripSuffix" and username.endswith(text):
            candidate = username[: len(username) - len(text)]
        elif op == "stripPrefix" and username.startswith(text):
            candidate = username[len(text) :]
        else:
            continue
        if valid_user(candidate):
            return candidate
    return None


def user_refusal(username: str, user: str, policy: Policy, *, assign: bool) -> str | None:
    """Why ``username`` may not make or change a session with ``spec.user`` ``user``
    (None: it may). Admission's rule alone: the operator never knows the requester."""
    if assign:
        return None
    mine = map_user(username, policy)
    if mine is None:
        return (
            f"spec.user: the requester {username} is not a valid spec.user and no "
            f"userMapping line of ConfigMap {CONFIGMAP} maps it to one"
        )
    if mine != user:
        return (
            f"spec.user: must be {mine} (the requester); only holders of verb assign on "
            f"{naming.PLURAL}.{naming.GROUP} may set another user"
        )
    return None


def identities(user: str, policy: Policy) -> list[str]:
    """The Kubernetes user names that stand for ``spec.user`` ``user`` (the operator asks
    the authorizer as each: it cannot know who made the request)."""
    candidates = [user]
    for op, text in policy.user_mapping:
        candidates.append(user + text if op == "stripSuffix" else text + user)
    return [c for c in dict.fromkeys(candidates) if map_user(c, policy) == user]


@dataclass(frozen=True)
class Reference:
    """A Secret, ConfigMap or claim the spec points at, and where."""

    kind: str
    """``Secret``, ``ConfigMap`` or ``PersistentVolumeClaim``."""
    name: str
    path: str


def references(spec: Mapping[str, Any]) -> list[Reference]:
    """Every Secret, ConfigMap and claim ``spec.env`` and ``spec.volumes`` name."""
    found: list[Reference] = []
    for i, env in enumerate(spec.get("env") or []):
        source = env.get("valueFrom") or {}
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            ref = source.get(key)
            if isinstance(ref, Mapping) and ref.get("name"):
                found.append(
                    Reference(kind, str(ref["name"]), f"spec.env[{i}].valueFrom.{key}.name")
                )
    for i, volume in enumerate(spec.get("volumes") or []):
        base = f"spec.volumes[{i}]"
        secret = volume.get("secret")
        if isinstance(secret, Mapping) and secret.get("secretName"):
            found.append(
                Reference("Secret", str(secret["secretName"]), f"{base}.secret.secretName")
            )
        config = volume.get("configMap")
        if isinstance(config, Mapping) and config.get("name"):
            found.append(Reference("ConfigMap", str(config["name"]), f"{base}.configMap.name"))
        claim = volume.get("persistentVolumeClaim")
        if isinstance(claim, Mapping) and claim.get("claimName"):
            found.append(
                Reference(
                    "PersistentVolumeClaim",
                    str(claim["claimName"]),
                    f"{base}.persistentVolumeClaim.claimName",
                )
            )
        projected = volume.get("projected")
        if isinstance(projected, Mapping):
            for j, source in enumerate(projected.get("sources") or []):
                where = f"{base}.projected.sources[{j}]"
                ps = source.get("secret") if isinstance(source, Mapping) else None
                if isinstance(ps, Mapping) and ps.get("name"):
                    found.append(Reference("Secret", str(ps["name"]), f"{where}.secret.name"))
                pc = source.get("configMap") if isinstance(source, Mapping) else None
                if isinstance(pc, Mapping) and pc.get("name"):
                    found.append(Reference("ConfigMap", str(pc["name"]), f"{where}.configMap.name"))
    return found


@dataclass(frozen=True)
class Lookups:
    """What the operator looked up for the references the allowlists do not name."""

    readable: frozenset[tuple[str, str]] = frozenset()
    """(kind, name) of the Secrets and ConfigMaps the session's user may ``get``."""
    claim_users: Mapping[str, str | None] = field(default_factory=dict)
    """Claim name -> its ``kernelsession.dev/user`` label (None: no label, or no claim)."""


def to_look_up(spec: Mapping[str, Any], policy: Policy, session: str) -> list[Reference]:
    """The references whose verdict depends on the cluster (not allowlisted, not a token
    name): Secrets and ConfigMaps to ask the authorizer about, claims to read."""
    return [r for r in references(spec) if _decided(r, policy, session) is None]


def _allowlist(policy: Policy, kind: str) -> frozenset[str]:
    return {
        "Secret": policy.secrets,
        "ConfigMap": policy.config_maps,
        "PersistentVolumeClaim": policy.claims,
    }[kind]


def _decided(ref: Reference, policy: Policy, session: str) -> str | None:
    """The verdict that needs no lookup: ``ok``, a refusal, or None (look it up)."""
    if ref.kind == "Secret" and ref.name.endswith(TOKEN_SUFFIX):
        if ref.name == naming.token_secret_name(session):
            return "ok"
        return (
            f"{ref.path}: Secret {ref.name!r} is reserved: names ending in "
            f"{TOKEN_SUFFIX!r} are lab token Secrets, and a lab may use only its own"
        )
    if ref.name in _allowlist(policy, ref.kind):
        return "ok"
    return None


def violations(
    session: str, spec: Mapping[str, Any], policy: Policy, lookups: Lookups
) -> list[str]:
    """Each rule ``spec`` breaks, as ``<field path>: <what and which rule>``; empty when
    none. ``session`` is the session's name (its own token Secret may be referenced)."""
    problems: list[str] = []
    user = str(spec.get("user") or "")
    for ref in references(spec):
        verdict = _decided(ref, policy, session)
        if verdict == "ok":
            continue
        if verdict is not None:
            problems.append(verdict)
        elif ref.kind == "PersistentVolumeClaim":
            owner = lookups.claim_users.get(ref.name)
            if owner != user:
                problems.append(
                    f"{ref.path}: claim {ref.name!r} is not labelled "
                    f"{naming.USER_LABEL}={user} and is not in the namespace's claims allowlist"
                )
        elif (ref.kind, ref.name) not in lookups.readable:
            problems.append(
                f"{ref.path}: {user} may not get {ref.kind} {ref.name!r} and it is not in the "
                f"namespace's {'secrets' if ref.kind == 'Secret' else 'configMaps'} allowlist"
            )
    problems.extend(_volume_types(spec))
    problems.extend(_pod_labels(spec))
    problems.extend(_image(spec, policy))
    problems.extend(_scheduling(spec, policy))
    problems.extend(_resources(spec, policy))
    problems.extend(_culling(spec, policy))
    return problems


def _volume_types(spec: Mapping[str, Any]) -> Iterable[str]:
    for i, volume in enumerate(spec.get("volumes") or []):
        for key in sorted(k for k in volume if k != "name"):
            if key not in VOLUME_TYPES:
                yield (
                    f"spec.volumes[{i}].{key}: volume type {key} is not allowed "
                    f"(only {', '.join(VOLUME_TYPES)})"
                )
        projected = volume.get("projected")
        if isinstance(projected, Mapping):
            for j, source in enumerate(projected.get("sources") or []):
                for key in sorted(source):
                    if key not in PROJECTED_SOURCES:
                        yield (
                            f"spec.volumes[{i}].projected.sources[{j}].{key}: projected source "
                            f"{key} is not allowed (only {', '.join(PROJECTED_SOURCES)})"
                        )


def _pod_labels(spec: Mapping[str, Any]) -> Iterable[str]:
    for key in sorted(spec.get("podLabels") or {}):
        if key.startswith(RESERVED_LABEL_PREFIX):
            yield (
                f"spec.podLabels[{key}]: labels under {RESERVED_LABEL_PREFIX} are the "
                "operator's (a lab pod is never a client)"
            )


def _image(spec: Mapping[str, Any], policy: Policy) -> Iterable[str]:
    image = spec.get("image")
    if image is None or policy.images is None:
        return
    for allowed in policy.images:
        if image == allowed or (allowed.endswith("*") and image.startswith(allowed[:-1])):
            return
    yield f"spec.image: {image!r} is not in the namespace's images allowlist"


def _scheduling(spec: Mapping[str, Any], policy: Policy) -> Iterable[str]:
    for i, tol in enumerate(spec.get("tolerations") or []):
        if not any(rule.allows(tol) for rule in policy.tolerations):
            yield f"spec.tolerations[{i}]: toleration not in the namespace's tolerations allowlist"
    for key, value in sorted((spec.get("nodeSelector") or {}).items()):
        if (key, str(value)) not in policy.node_selector:
            yield (
                f"spec.nodeSelector[{key}]: {key}={value} is not in the namespace's "
                "nodeSelector allowlist"
            )


def _resources(spec: Mapping[str, Any], policy: Policy) -> Iterable[str]:
    resources = spec.get("resources") or {}
    if not resources:  # the operator's defaults (the admin's choice) apply
        return
    for name in BOUNDED:
        bound = policy.max_cpu if name == "cpu" else policy.max_memory
        if bound is None:
            continue
        limit = (resources.get("limits") or {}).get(name)
        if limit is None:
            yield (
                f"spec.resources.limits.{name}: required (the namespace bounds {name} "
                f"at {_key(name)})"
            )
        for part in ("requests", "limits"):
            value = (resources.get(part) or {}).get(name)
            if value is None:
                continue
            try:
                amount = quantity(value)
            except ValueError:
                yield f"spec.resources.{part}.{name}: {value!r} is not a quantity"
                continue
            if amount > bound:
                yield (
                    f"spec.resources.{part}.{name}: {value} is over the namespace's {_key(name)}"
                )


def _key(name: str) -> str:
    return "maxCPU" if name == "cpu" else "maxMemory"


def _culling(spec: Mapping[str, Any], policy: Policy) -> Iterable[str]:
    culling = spec.get("culling") or {}
    for key, bound, bound_key in (
        ("idleTimeoutSeconds", policy.max_idle_timeout, "maxIdleTimeoutSeconds"),
        ("maxAgeSeconds", policy.max_age, "maxAgeSeconds"),
    ):
        value = culling.get(key)
        if value is None:
            continue
        if int(value) == 0:
            if not policy.culling_never_allowed:
                yield (
                    f"spec.culling.{key}: 0 (never) is not allowed in this namespace "
                    "(cullingNeverAllowed)"
                )
        elif bound is not None and int(value) > bound:
            yield f"spec.culling.{key}: {value} is over the namespace's {bound_key} ({bound})"
