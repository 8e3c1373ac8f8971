"""The operator's Kubernetes calls for child objects (kubernetes_asyncio).

Watches belong to kopf; this module only creates, reads and deletes children and
writes the session status. Every call is idempotent: creating what exists is not an
error, deleting what is gone is not an error.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.client.kubeapi import MERGE_PATCH, api_message, load_api_client
from kernelsession.operator import naming


class ChildRejected(Exception):
    """The API server refused a child built from the session spec (HTTP 4xx, not 409)."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(f"{kind} rejected ({status}): {message}")
        self.kind = kind
        self.status = status
        self.message = message


class Kube:
    """Typed access to the few API calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.storage = client.StorageV1Api(api)
        self.coordination = client.CoordinationV1Api(api)

    @classmethod
    async def connect(cls) -> Kube:
        """Credentials from the service account in a pod, else from ``KUBECONFIG``."""
        return cls(await load_api_client())

    async def close(self) -> None:
        await self.api.close()

    async def create(self, manifest: Mapping[str, Any]) -> str | None:
        """Create ``manifest``; the new object's uid, or None when it already exists.

        Raises:
            ChildRejected: the API server rejected it (invalid, forbidden...).
        """
        kind = manifest["kind"]
        ns = manifest["metadata"]["namespace"]
        body = cast(Any, dict(manifest))  # the generated API accepts plain dicts
        created: Any
        try:
            if kind == "Pod":
                created = await self.core.create_namespaced_pod(ns, body)
            elif kind == "Secret":
                created = await self.core.create_namespaced_secret(ns, body)
            elif kind == "Service":
                created = await self.core.create_namespaced_service(ns, body)
            elif kind == "NetworkPolicy":
                created = await self.net.create_namespaced_network_policy(ns, body)
            elif kind == "PersistentVolumeClaim":
                created = await self.core.create_namespaced_persistent_volume_claim(ns, body)
            elif kind == "Ingress":
                created = await self.net.create_namespaced_ingress(ns, body)
            else:  # pragma: no cover - programming error
                raise ValueError(f"unsupported kind {kind}")
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise ChildRejected(kind, exc.status, api_message(exc)) from None
            raise
        return str(created.metadata.uid)

    async def read_token(
        self, namespace: str, name: str
    ) -> tuple[str, str, Mapping[str, str]] | None:
        """(uid, token, labels) of the token Secret, or None when it does not exist."""
        try:
            secret = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(naming.TOKEN_KEY, "")
        token = base64.b64decode(raw).decode() if raw else ""
        return secret.metadata.uid, token, dict(secret.metadata.labels or {})

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
        """Merge-patch a NetworkPolicy or Ingress; False when it changed meanwhile (409,
        its ``resourceVersion`` precondition) or is gone (404).

        Raises:
            ChildRejected: the API server rejected the patched object.
        """
        call = {
            "NetworkPolicy": self.net.patch_namespaced_network_policy,
            "Ingress": self.net.patch_namespaced_ingress,
        }[kind]
        try:
            await cast(Any, call)(name, namespace, dict(patch), _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise ChildRejected(kind, exc.status, api_message(exc)) from None
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an Ingress (gone already is fine)."""
        call = {"Ingress": self.net.delete_namespaced_ingress}[kind]
        try:
            await call(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_pod(self, namespace: str, name: str) -> None:
        try:
            await self.core.delete_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the session's status subresource; the updated session, or None
        when the session is gone (404)."""
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
