"""Read the API server's audit log (``LocalCluster(audit=True)``) and count requests.

    entries = read(cluster.audit_log, user=OPERATOR_USER)
    counts = count(entries)            # {"create pods": 3, "patch kernelsessions/status": 5}
    writes(entries), reads(entries), denied(entries)

One JSON object per line (``audit.k8s.io/v1`` ``Event``, stage ResponseComplete or,
for watches, ResponseStarted). Non-resource requests (``/healthz``, ``/api``) have no
``objectRef``; they count under their path. Lines that are not complete JSON (a line
being written) are skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})
SERVICE_ACCOUNT_USER = "system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Entry:
    """One request as the audit log saw it."""

    verb: str
    resource: str  # "pods", "kernelsessions/status", or the path of a non-resource URL
    namespace: str | None
    name: str | None
    api_group: str
    user: str
    code: int | None
    stage: str
    time: str  # stageTimestamp (RFC 3339, microseconds)
    user_agent: str = ""
    received: str = ""  # requestReceivedTimestamp
    pod: str = ""
    """The pod whose service-account token made the request (a bound token's
    ``authentication.kubernetes.io/pod-name``), "" for other credentials."""
    decision: str = ""
    """The authorizer's ``authorization.k8s.io/decision``: "allow" or "forbid" (a 403
    with "allow" was refused by admission, e.g. a ResourceQuota, not by RBAC)."""

    @property
    def succeeded(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def read(self) -> bool:
        return self.verb in READ_VERBS

    @property
    def denied(self) -> bool:
        return self.code == 403

    @property
    def key(self) -> str:
        """``"VERB RESOURCE"``, e.g. ``"patch kernelsessions/status"``."""
        return f"{self.verb} {self.resource}"


def parse_line(line: str) -> Entry | None:
    """The entry of one audit line, or None for blank, partial or non-Event lines."""
    line = line.strip()
    if not line:
        return None
    try:
        event: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    if event.get("kind") != "Event":
        return None
    ref = event.get("objectRef") or {}
    if ref.get("resource"):
        resource = str(ref["resource"])
        if ref.get("subresource"):
            resource += "/" + str(ref["subresource"])
    else:
        resource = str(event.get("requestURI", "")).split("?", 1)[0]
    status = event.get("responseStatus") or {}
    code = status.get("code")
    user = event.get("user") or {}
    pods = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [""]
    return Entry(
        verb=str(event.get("verb", "")),
        resource=resource,
        namespace=ref.get("namespace"),
        name=ref.get("name"),
        api_group=str(ref.get("apiGroup", "")),
        user=str(user.get("username", "")),
        code=int(code) if code is not None else None,
        stage=str(event.get("stage", "")),
        time=str(event.get("stageTimestamp") or event.get("requestReceivedTimestamp") or ""),
        user_agent=str(event.get("userAgent", "")),
        received=str(event.get("requestReceivedTimestamp") or ""),
        pod=str(pods[0]),
        decision=str((event.get("annotations") or {}).get("authorization.k8s.io/decision", "")),
    )


class AuditLogRotated(Exception):
    """The audit log was rotated after an offset into it was taken."""


def parse(lines: Iterable[str], *, user: str | None = None) -> Iterator[Entry]:
    """Entries of ``lines``, optionally only those made by ``user``."""
    for line in lines:
        entry = parse_line(line)
        if entry is not None and (user is None or entry.user == user):
            yield entry


def read(path: Path, *, user: str | None = None, offset: int = 0) -> list[Entry]:
    """Entries in the audit log at ``path`` from byte ``offset`` on (see :func:`size`).

    Raises:
        OSError: the file cannot be read.
        AuditLogRotated: the file is shorter than ``offset``: it was rotated since, and
            the entries after ``offset`` are in a file this reader does not know.
    """
    with path.open("rb") as f:
        end = f.seek(0, 2)
        if end < offset:
            raise AuditLogRotated(f"{path} is {end} bytes, shorter than offset {offset}")
        f.seek(offset)
        data = f.read().decode(errors="replace")
    return list(parse(data.splitlines(), user=user))


def size(path: Path) -> int:
    """Current size of the log: pass it as ``offset`` to read only later requests."""
    return path.stat().st_size if path.exists() else 0


def count(entries: Iterable[Entry]) -> Counter[str]:
    """Requests per ``"VERB RESOURCE"``."""
    return Counter(entry.key for entry in entries)


def writes(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if e.write]


def reads(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if e.read]


def denied(entries: Iterable[Entry]) -> list[Entry]:
    """Requests the API server refused with 403 Forbidden."""
    return [e for e in entries if e.denied]


def unexplained_refusals(
    mine: Sequence[Entry], everyone: Iterable[Entry], binding: str
) -> list[Entry]:
    """RBAC refusals among ``mine`` (one account's requests) that name a missing grant.

    Not counted: a 403 that admission gave after RBAC allowed it (a ResourceQuota); one
    the account retried into success (the same verb on the same object succeeded later,
    e.g. while a restarted API server's authorizer was still loading); one in a namespace
    where the RoleBinding ``binding`` (the account's own there) did not exist at the time
    (not made yet, deleted, or the namespace being deleted), read from ``everyone``'s
    requests.
    """
    changes: dict[str, list[tuple[str, bool]]] = {}
    for e in everyone:
        if not e.succeeded:
            continue
        if e.resource == "rolebindings" and e.name == binding and e.verb in ("create", "delete"):
            changes.setdefault(e.namespace or "", []).append((e.time, e.verb == "create"))
        elif e.resource == "namespaces" and e.verb == "delete" and e.name:
            changes.setdefault(e.name, []).append((e.time, False))
    bound_namespaces = set(changes)

    def bound(namespace: str | None, when: str) -> bool:
        if namespace not in bound_namespaces:
            return True  # bound by the manifests, not by itself
        state = False
        for time, present in sorted(changes[namespace or ""]):
            if time > when:
                break
            state = present
        return state

    def retried(refused: Entry) -> bool:
        return any(
            e.succeeded
            and e.time > refused.time
            and (e.verb, e.resource, e.namespace, e.name)
            == (refused.verb, refused.resource, refused.namespace, refused.name)
            for e in mine
        )

    return [
        e
        for e in mine
        if e.denied and e.decision != "allow" and bound(e.namespace, e.time) and not retried(e)
    ]


def service_account(namespace: str, name: str) -> str:
    """The user name a service account authenticates as."""
    return SERVICE_ACCOUNT_USER.format(namespace=namespace, name=name)
