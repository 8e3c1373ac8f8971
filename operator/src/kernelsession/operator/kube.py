"""The operator's Kubernetes calls for child objects (kubernetes_asyncio).

Watches belong to kopf; this module only creates, reads and deletes children, writes
the session status and posts its events. Every call is idempotent: creating what exists
is not an error, deleting what is gone is not an error.

Every request has a deadline (``api_timeout``). Every write first asks the ``fence``
(the leader elector: does this replica still hold the Lease, within its renew
deadline?) and raises :class:`~errors.NotLeading` without sending when not. The API
client's sockets close with a reset (``SO_LINGER`` 0): a request cancelled when this
replica steps down is dropped from the kernel's send queue, never delivered later when
a partition heals.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.client.kubeapi import MERGE_PATCH, api_message, load_api_client
from kernelsession.operator import naming
from kernelsession.operator.errors import NotLeading

EVENT_COMPONENT = "kernelsession-operator"
MAX_EVENT_MESSAGE = 1024


class ChildRejected(Exception):
    """The API server refused a child built from the session spec (HTTP 4xx, not 409)."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(f"{kind} rejected ({status}): {message}")
        self.kind = kind
        self.status = status
        self.message = message


class Kube:
    """Typed access to the few API calls the operator makes."""

    def __init__(self, api: client.ApiClient, *, identity: str = "") -> None:
        self.api = api
        self.identity = identity
        self.fence: Callable[[], bool] | None = None
        """Asked before every write; None: always allowed (no leader election)."""
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.storage = client.StorageV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.authorization = client.AuthorizationV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    @classmethod
    async def connect(cls, *, timeout: float = 15.0, identity: str = "") -> Kube:
        """Credentials from the service account in a pod, else from ``KUBECONFIG``; every
        request has a deadline of ``timeout`` seconds and its socket closes with a reset."""
        api = await load_api_client(request_timeout=timeout)
        reset_on_close(api)
        no_environment_lookups(api)
        return cls(api, identity=identity)

    def check_fence(self) -> None:
        """Raises NotLeading when this replica may not write (see ``fence``)."""
        if self.fence is not None and not self.fence():
            raise NotLeading("this replica does not hold the Lease")

    async def close(self) -> None:
        await self.api.close()

    async def create(self, manifest: Mapping[str, Any]) -> str | None:
        """Create ``manifest``; the new object's uid, or None when it already exists.

        Raises:
            ChildRejected: the API server rejected it (invalid, forbidden...).
        """
        self.check_fence()
        kind = manifest["kind"]
        ns = manifest["metadata"]["namespace"]
        body = cast(Any, dict(manifest))  # the generated API accepts plain dicts
        calls: dict[str, Callable[..., Awaitable[Any]]] = {
            "Pod": self.core.create_namespaced_pod,
            "Secret": self.core.create_namespaced_secret,
            "Service": self.core.create_namespaced_service,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Ingress": self.net.create_namespaced_ingress,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        if kind not in calls:  # pragma: no cover - programming error
            raise ValueError(f"unsupported kind {kind}")
        try:
            created = await answer(calls[kind], ns, body)
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise ChildRejected(kind, exc.status, api_message(exc)) from None
            raise
        return str(created["metadata"]["uid"])

    async def read_token(
        self, namespace: str, name: str
    ) -> tuple[str, str, Mapping[str, str], tuple[str, ...]] | None:
        """(uid, token, labels, owner uids) of the token Secret, or None when it does not
        exist."""
        try:
            secret = await answer(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        meta = secret.get("metadata") or {}
        raw = (secret.get("data") or {}).get(naming.TOKEN_KEY, "")
        token = base64.b64decode(raw).decode() if raw else ""
        owners = tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or [])
        return str(meta.get("uid") or ""), token, dict(meta.get("labels") or {}), owners

    async def read_policy(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ``data`` of the namespace's policy ConfigMap; None when there is none."""
        try:
            found = await self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(found.data or {})

    async def may_get(self, namespace: str, user: str, resource: str, name: str) -> bool:
        """Whether ``user`` (as an authenticated user, groups unknown) may ``get`` the
        core ``resource`` ``name`` in ``namespace`` (a LocalSubjectAccessReview)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "LocalSubjectAccessReview",
            "metadata": {"namespace": namespace},
            "spec": {
                "user": user,
                "groups": ["system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "get",
                    "group": "",
                    "resource": resource,
                    "name": name,
                },
            },
        }
        result = await self.authorization.create_namespaced_local_subject_access_review(
            namespace, cast(Any, review)
        )
        return bool(result.status and result.status.allowed)

    async def claim_user(self, namespace: str, name: str) -> str | None:
        """The ``kernelsession.dev/user`` label of claim ``name`` (None: no label, or no
        such claim); listed by name, as the operator may list claims but not get them."""
        found = await self.core.list_namespaced_persistent_volume_claim(
            namespace, field_selector=f"metadata.name={name}"
        )
        for item in found.items or []:
            labels = item.metadata.labels or {}
            user = labels.get(naming.USER_LABEL)
            return str(user) if user is not None else None
        return None

    async def storage_class(self, name: str) -> str | None:
        """The volumeBindingMode of storage class ``name`` (None when it does not exist)."""
        try:
            found = await self.storage.read_storage_class(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(found.volume_binding_mode or "Immediate")

    async def latest_event(self, namespace: str, kind: str, name: str) -> str | None:
        """``reason: message`` of the newest event about object ``kind/name``, if any."""
        events = await self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
        )

        def when(e: Any) -> str:
            stamp = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
            return stamp.isoformat() if stamp else ""

        items = sorted(events.items or [], key=when)
        if not items:
            return None
        newest = items[-1]
        return f"{newest.reason}: {(newest.message or '').strip()}"

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Merge-patch a NetworkPolicy, Ingress, RoleBinding or claim (its owners); False
        when it changed meanwhile (409, its ``resourceVersion`` precondition) or is gone (404).

        Raises:
            ChildRejected: the API server rejected the patched object.
        """
        self.check_fence()
        call = {
            "NetworkPolicy": self.net.patch_namespaced_network_policy,
            "Ingress": self.net.patch_namespaced_ingress,
            "PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
        }[kind]
        try:
            await answer(call, name, namespace, dict(patch), _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise ChildRejected(kind, exc.status, api_message(exc)) from None
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an Ingress (gone already is fine)."""
        self.check_fence()
        call = {"Ingress": self.net.delete_namespaced_ingress}[kind]
        try:
            await answer(call, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.check_fence()
        try:
            await answer(self.core.delete_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def session_keys(self, namespaces: tuple[str, ...]) -> list[tuple[str, str]]:
        """(namespace, name) of every session in ``namespaces`` (empty: all)."""
        items: list[Any] = []
        if namespaces:
            for ns in namespaces:
                found = await cast(Any, self.custom).list_namespaced_custom_object(
                    naming.GROUP, naming.VERSION, ns, naming.PLURAL
                )
                items.extend(found.get("items") or [])
        else:
            found = await cast(Any, self.custom).list_cluster_custom_object(
                naming.GROUP, naming.VERSION, naming.PLURAL
            )
            items.extend(found.get("items") or [])
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the session's status subresource; the updated session, or None
        when the session is gone (404)."""
        self.check_fence()
        try:
            result = await cast(Any, self.custom).patch_namespaced_custom_object_status(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                name,
                {"status": dict(patch)},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return dict(result)

    async def post_event(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about ``obj`` (a session body): ``kind`` Normal|Warning."""
        self.check_fence()
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        if len(message) > MAX_EVENT_MESSAGE:
            message = message[: MAX_EVENT_MESSAGE - 3] + "..."
        now = datetime.now(UTC).isoformat()
        body = {
            "metadata": {"namespace": namespace, "generateName": f"{meta.get('name', 'ks')}."},
            "type": kind,
            "reason": reason,
            "message": message,
            "action": reason,
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": self.identity or EVENT_COMPONENT,
            "source": {"component": EVENT_COMPONENT},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": now,
        }
        await answer(self.core.create_namespaced_event, namespace, cast(Any, body))


async def answer(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Make a request with a generated API method and return the object it answered as
    parsed JSON, without building the library's model objects from it (0.4 ms of CPU for
    a small pod's model on this project's machine, 30 times its JSON decoding; and a
    model refuses an answer that lacks a field it requires).

    Raises:
        ApiException: the API server answered outside 2xx (``status``, ``reason`` and the
            ``body`` as text, as the generated methods raise it).
    """
    response = await call(*args, _preload_content=False, **kwargs)
    try:
        data: bytes = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        exc = ApiException(status=response.status, reason=response.reason)
        exc.headers = response.headers
        exc.body = cast(Any, data.decode("utf-8", "replace"))  # str, as the generated calls
        raise exc
    found = json.loads(data) if data else {}
    return found if isinstance(found, dict) else {}


_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset_socket(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    return sock


def reset_on_close(api: client.ApiClient) -> None:
    """Make ``api``'s sockets close with a reset (``SO_LINGER`` 0): what a cancelled
    request left unsent or unacknowledged is dropped, not retransmitted later.

    aiohttp >= 3.12 creates the sockets of a ``TCPConnector`` with its
    ``socket_factory``; kubernetes_asyncio builds the connector itself, so it is set on
    the connector it built (before any connection exists).
    """
    connector: Any = api.rest_client.pool_manager.connector
    if not hasattr(connector, "_socket_factory"):  # pragma: no cover - aiohttp < 3.12
        raise RuntimeError("aiohttp >= 3.12 is needed (TCPConnector socket_factory)")
    connector._socket_factory = _reset_socket


def no_environment_lookups(api: client.ApiClient) -> None:
    """Stop ``api``'s session from consulting the environment on every request.

    kubernetes_asyncio makes its ``aiohttp.ClientSession`` with ``trust_env=True``, so
    aiohttp reads ``~/.netrc`` in a worker thread before each request (and looks up proxy
    variables): a thread hop and a file read per API call, a tenth of the operator's
    interpreter time at 3,000 sessions. The operator talks to its API server directly.
    """
    session: Any = api.rest_client.pool_manager
    if not hasattr(session, "_trust_env"):  # pragma: no cover - another aiohttp
        raise RuntimeError("aiohttp's ClientSession has no _trust_env")
    session._trust_env = False
