"""The API calls of the LabProfile controller (kubernetes_asyncio): the namespace and its
objects (create, read, merge-patch with a resourceVersion precondition, delete), the
profile's status and finalizer, Events about a profile, and stopping a session."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.client.kubeapi import MERGE_PATCH, api_message
from kernelsession.operator import naming, profiles
from kernelsession.operator.kube import ChildRejected, Kube
from kernelsession.operator.status import fmt_time, now_utc

EVENTS_NAMESPACE = "default"
# kind -> (API attribute of ProfileKube, the generated methods' suffix)
_CALLS = {
    "ResourceQuota": ("core", "resource_quota"),
    "LimitRange": ("core", "limit_range"),
    "ConfigMap": ("core", "config_map"),
    "NetworkPolicy": ("net", "network_policy"),
    "RoleBinding": ("rbac", "role_binding"),
}


def _rejected(kind: str, exc: ApiException) -> bool:
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (409, 429)


class ProfileKube:
    """Typed access to what the profile controller reads and writes."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self.api = kube.api
        self.core = kube.core
        self.net = kube.net
        self.custom = kube.custom
        self.rbac = client.RbacAuthorizationV1Api(kube.api)
        self.authz = client.AuthorizationV1Api(kube.api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create ``manifest``; False when it exists already (409).

        Raises:
            ChildRejected: the API server refused it (invalid, forbidden...).
        """
        self._kube.check_fence()  # no write leaves a replica that does not lead
        kind = manifest["kind"]
        body = cast(Any, dict(manifest))
        try:
            if kind == "Namespace":
                await self.core.create_namespace(body)
            else:
                api, suffix = _CALLS[kind]
                call = getattr(getattr(self, api), f"create_namespaced_{suffix}")
                await call(manifest["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            if _rejected(kind, exc):
                raise ChildRejected(kind, exc.status or 0, api_message(exc)) from None
            raise
        return True

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it does not exist."""
        try:
            if kind == "Namespace":
                found = await self.core.read_namespace(name)
            else:
                api, suffix = _CALLS[kind]
                call = getattr(getattr(self, api), f"read_namespaced_{suffix}")
                found = await call(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(found)

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Merge-patch; False when it changed meanwhile (409) or is gone (404).

        Raises:
            ChildRejected: the API server refused the patched object.
        """
        self._kube.check_fence()  # no write leaves a replica that does not lead
        try:
            if kind == "Namespace":
                await cast(Any, self.core).patch_namespace(
                    name, dict(patch), _content_type=MERGE_PATCH
                )
            else:
                api, suffix = _CALLS[kind]
                call = getattr(getattr(self, api), f"patch_namespaced_{suffix}")
                await call(name, namespace, dict(patch), _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            if _rejected(kind, exc):
                raise ChildRejected(kind, exc.status or 0, api_message(exc)) from None
            raise
        return True

    async def allowed(self, verb: str, group: str, resource: str, namespace: str) -> bool:
        """Whether the operator may ``verb`` ``resource`` in ``namespace`` now (a
        SelfSubjectAccessReview, which every account may make)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "namespace": namespace,
                }
            },
        }
        result = await self.authz.create_self_subject_access_review(cast(Any, review))
        return bool(result.status.allowed)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a namespaced object (gone already is fine)."""
        self._kube.check_fence()  # no write leaves a replica that does not lead
        api, suffix = _CALLS[kind]
        try:
            await getattr(getattr(self, api), f"delete_namespaced_{suffix}")(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_profile(self, name: str, patch: Mapping[str, Any], *, status: bool) -> bool:
        """Merge-patch the profile (or its status); False when it is gone or changed (a
        resourceVersion precondition in ``patch``)."""
        self._kube.check_fence()  # no write leaves a replica that does not lead
        custom = cast(Any, self.custom)
        call = (
            custom.patch_cluster_custom_object_status
            if status
            else custom.patch_cluster_custom_object
        )
        try:
            await call(
                naming.GROUP,
                naming.VERSION,
                profiles.PLURAL,
                name,
                dict(patch),
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def stop_session(self, namespace: str, name: str, profile: str | None) -> bool:
        """Put (``profile``: the deleted LabProfile's name) or take away (None) the
        :data:`naming.STOPPED_ANNOTATION` of a session: its lab stops, or may start again;
        its spec, token and home stay. False when the session is gone."""
        self._kube.check_fence()  # no write leaves a replica that does not lead
        try:
            await cast(Any, self.custom).patch_namespaced_custom_object(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                name,
                {"metadata": {"annotations": {naming.STOPPED_ANNOTATION: profile}}},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def event(
        self, profile: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """An Event about the (cluster-scoped) profile: in namespace ``default``, where the
        API server keeps events of cluster-scoped objects; ``kubectl describe labprofile``
        shows it. Best effort: a failure is not an error."""
        self._kube.check_fence()  # no write leaves a replica that does not lead
        namespace = EVENTS_NAMESPACE
        meta = profile["metadata"]
        stamp = fmt_time(now_utc())
        body = {
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
                "kind": profiles.KIND,
                "name": meta["name"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": naming.MANAGER},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.core.create_namespaced_event(namespace, cast(Any, body))
        except ApiException:
            return
