"""``KernelSessionClient``: KernelSession resources from code (kubernetes_asyncio).

Create a session, follow its progress, wait until it is Ready, open a
:class:`JupyterLabSessionManager` from its status and token Secret, delete it. The
token is read from the Secret named in ``status.tokenSecretName`` and is never logged
or put in an exception message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any, cast

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ._logging import default_logger
from ._manager import JupyterLabSessionManager
from ._reach import reachable_url
from .kubeapi import MERGE_PATCH, api_message, load_api_client
from .resources import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    GROUP,
    KIND,
    PLURAL,
    RESUME_ANNOTATION,
    SESSION_LABEL,
    VERSION,
    KernelSessionStatus,
    Phase,
    parse_status,
    read_token,
)

__all__ = [
    "KernelSessionApiError",
    "KernelSessionClient",
    "KernelSessionError",
    "KernelSessionFailedError",
    "KernelSessionNotFoundError",
    "KernelSessionStatus",
    "KernelSessionTimeoutError",
]


class KernelSessionError(Exception):
    """Base of the errors about KernelSession resources (not the lab's code)."""

    def __init__(self, message: str, *, name: str, namespace: str) -> None:
        super().__init__(message)
        self.name = name
        self.namespace = namespace


class KernelSessionApiError(KernelSessionError):
    """The Kubernetes API server refused or failed a request about the session.

    Attributes:
        status: The HTTP status (e.g. 403 when RBAC forbids reading the token Secret).
    """

    def __init__(self, message: str, *, name: str, namespace: str, status: int | None) -> None:
        super().__init__(message, name=name, namespace=namespace)
        self.status = status


class KernelSessionNotFoundError(KernelSessionError):
    """The session does not exist (or was deleted while waiting)."""


class KernelSessionFailedError(KernelSessionError):
    """The session went Failed or Culled; ``reason`` and ``message`` say why."""

    def __init__(
        self, message: str, *, name: str, namespace: str, phase: str, reason: str | None
    ) -> None:
        super().__init__(message, name=name, namespace=namespace)
        self.phase = phase
        self.reason = reason


class KernelSessionTimeoutError(KernelSessionError):
    """The session did not become Ready in time; ``last`` is the last status seen."""

    def __init__(
        self, message: str, *, name: str, namespace: str, last: KernelSessionStatus | None
    ) -> None:
        super().__init__(message, name=name, namespace=namespace)
        self.last = last


class KernelSessionClient:
    """Manage KernelSessions in one namespace.

    Use as ``async with KernelSessionClient(namespace="labs") as ks:``; it loads
    credentials from ``kubeconfig``/``$KUBECONFIG`` or the in-cluster service account
    unless an ``api_client`` is given (then the caller closes it).
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        kubeconfig: str | None = None,
        api_client: client.ApiClient | None = None,
        logger: Any = None,
    ) -> None:
        self.namespace = namespace
        self._kubeconfig = kubeconfig
        self._api = api_client
        self._owns_api = api_client is None
        self._log = logger if logger is not None else default_logger()

    async def __aenter__(self) -> KernelSessionClient:
        if self._api is None:
            self._api = await load_api_client(self._kubeconfig)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._api is not None and self._owns_api:
            await self._api.close()
            self._api = None

    @property
    def _custom(self) -> Any:
        if self._api is None:
            raise RuntimeError("use KernelSessionClient as an async context manager")
        return client.CustomObjectsApi(self._api)

    @property
    def _core(self) -> client.CoreV1Api:
        if self._api is None:
            raise RuntimeError("use KernelSessionClient as an async context manager")
        return client.CoreV1Api(self._api)

    def _not_found(self, name: str) -> KernelSessionNotFoundError:
        return KernelSessionNotFoundError(
            f"KernelSession {self.namespace}/{name} not found", name=name, namespace=self.namespace
        )

    async def create(
        self,
        name: str,
        user: str,
        *,
        image: str | None = None,
        env: list[Mapping[str, Any]] | None = None,
        resources: Mapping[str, Any] | None = None,
        culling: Mapping[str, int] | None = None,
        start_timeout: int | None = None,
        extra_spec: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> KernelSessionStatus:
        """Create a session; unknown fields are rejected by the API server (strict validation).

        Raises:
            kubernetes_asyncio.client.exceptions.ApiException: e.g. 422 with the field
                named when the spec is invalid, 409 when the name is taken.
        """
        spec: dict[str, Any] = {"user": user}
        optional = {
            "image": image,
            "env": env,
            "resources": resources,
            "culling": culling,
            "startTimeoutSeconds": start_timeout,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        spec.update(extra_spec or {})
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": spec,
        }
        obj = await self._custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"
        )
        self._log.info("session created", session=name, namespace=self.namespace, user=user)
        return parse_status(obj)

    async def get(self, name: str) -> KernelSessionStatus:
        """The session's current status.

        Raises:
            KernelSessionNotFoundError: no such session.
        """
        try:
            obj = await self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise self._not_found(name) from None
            raise
        return parse_status(obj)

    async def follow(
        self, name: str, *, timeout: float = 300.0
    ) -> AsyncIterator[KernelSessionStatus]:
        """Yield the session's status now and at every change, for at most ``timeout`` s.

        Raises:
            KernelSessionNotFoundError: the session does not exist or was deleted.
        """
        deadline = time.monotonic() + timeout
        current = await self.get(name)
        yield current
        version = current.raw.get("metadata", {}).get("resourceVersion")
        while (left := deadline - time.monotonic()) > 0:
            w = watch.Watch()
            try:
                stream = w.stream(
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=max(1, int(min(left, 60))),
                    allow_watch_bookmarks=False,
                    # a watch outlives the default request deadline: its own, a little
                    # longer than the server's timeout_seconds
                    _request_timeout=min(left, 60) + 10,
                )
                async with asyncio.timeout(left + 5):
                    async for event in stream:
                        obj = cast(Mapping[str, Any], event["object"])
                        if event["type"] == "ERROR":
                            version = None  # expired: start over from a fresh read
                            break
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] == "DELETED":
                            raise self._not_found(name)
                        yield parse_status(obj)
            except TimeoutError:
                return
            except ApiException as exc:
                if exc.status != 410:
                    raise
                version = None
            finally:
                await w.close()
            if version is None:
                current = await self.get(name)
                version = current.raw.get("metadata", {}).get("resourceVersion")
                yield current

    async def wait_ready(
        self, name: str, *, timeout: float = 300.0, on_progress: Any = None
    ) -> KernelSessionStatus:
        """Wait until the session is Ready for its latest spec.

        ``on_progress(status)`` is called with every status seen.

        Raises:
            KernelSessionFailedError: it went Failed or Culled (reason and message inside).
            KernelSessionTimeoutError: not Ready within ``timeout`` seconds.
            KernelSessionNotFoundError: it does not exist or was deleted.
        """
        last: KernelSessionStatus | None = None
        async for status in self.follow(name, timeout=timeout):
            last = status
            if on_progress is not None:
                on_progress(status)
            if not status.current:
                continue
            if status.ready and status.url:
                return status
            if status.phase_enum in (Phase.FAILED, Phase.CULLED):
                raise KernelSessionFailedError(
                    status.describe(),
                    name=name,
                    namespace=self.namespace,
                    phase=status.phase or "Unknown",
                    reason=status.reason,
                )
        raise KernelSessionTimeoutError(
            f"KernelSession {self.namespace}/{name} not Ready after {timeout:g}s; last: "
            + (last.describe() if last else "no status"),
            name=name,
            namespace=self.namespace,
            last=last,
        )

    def _api_error(self, exc: ApiException, name: str, what: str) -> KernelSessionApiError:
        return KernelSessionApiError(
            f"{what} for KernelSession {self.namespace}/{name} failed: "
            f"HTTP {exc.status}: {api_message(exc)}",
            name=name,
            namespace=self.namespace,
            status=exc.status,
        )

    async def credentials(self, name: str) -> tuple[str, str, str]:
        """(url, token, user) of a Ready session; the token comes from its Secret. A
        Service DNS name that does not resolve here is replaced by the Service's cluster IP
        (see :mod:`._reach`).

        Raises:
            KernelSessionFailedError: the session is not Ready (phase and reason
                inside), or its token Secret is missing or holds no token.
            KernelSessionNotFoundError: no such session.
            KernelSessionApiError: the API server refused or failed a request
                (e.g. 403: not allowed to read the Secret).
        """
        try:
            status = await self.get(name)
        except ApiException as exc:
            raise self._api_error(exc, name, "reading the session") from None
        if not (status.ready and status.url and status.token_secret_name):
            raise KernelSessionFailedError(
                f"KernelSession is not Ready: {status.describe()}",
                name=name,
                namespace=self.namespace,
                phase=status.phase or "Unknown",
                reason=status.reason,
            )
        token = await self.token(name, status)
        try:
            url = await reachable_url(status.url, self._core)
        except ApiException as exc:
            raise self._api_error(exc, name, "reading the lab's Service") from None
        return url, token, status.user

    async def token(self, name: str, status: KernelSessionStatus | None = None) -> str:
        """The lab token of session ``name`` from the Secret its status names.

        ``status`` saves a read when the caller has the session's status already.

        Raises:
            KernelSessionFailedError: the status names no token Secret yet, or the
                Secret is missing or holds no token (reason ``TokenMissing``).
            KernelSessionNotFoundError: no such session.
            KernelSessionApiError: the API server refused or failed a request
                (e.g. 403: not allowed to read the Secret).
        """
        if status is None:
            try:
                status = await self.get(name)
            except ApiException as exc:
                raise self._api_error(exc, name, "reading the session") from None
        secret_name = status.token_secret_name
        if not secret_name:
            raise KernelSessionFailedError(
                f"KernelSession {self.namespace}/{name} names no token Secret in its status",
                name=name,
                namespace=self.namespace,
                phase=status.phase or "Unknown",
                reason="TokenMissing",
            )
        try:
            secret = await self._core.read_namespaced_secret(secret_name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise KernelSessionFailedError(
                    f"the token Secret {secret_name} does not exist",
                    name=name,
                    namespace=self.namespace,
                    phase=status.phase or "Unknown",
                    reason="TokenMissing",
                ) from None
            raise self._api_error(exc, name, "reading the token Secret") from None
        token = read_token(secret.data)
        if token is None:
            raise KernelSessionFailedError(
                f"Secret {secret_name} has no token",
                name=name,
                namespace=self.namespace,
                phase=status.phase or "Unknown",
                reason="TokenMissing",
            )
        return token

    async def resume(self, name: str, status: KernelSessionStatus | None = None) -> None:
        """Start a Culled, timed-out or Suspended session again.

        A Suspended session gets ``spec.suspend: false``; any other gets a new
        :data:`~kernelsession.client.resources.RESUME_ANNOTATION`.

        Raises:
            KernelSessionNotFoundError: no such session.
        """
        if status is None:
            status = await self.get(name)
        if status.phase_enum is Phase.SUSPENDED:
            body: dict[str, Any] = {"spec": {"suspend": False}}
        else:
            body = {"metadata": {"annotations": {RESUME_ANNOTATION: str(int(time.time()))}}}
        try:
            await self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status == 404:
                raise self._not_found(name) from None
            raise
        self._log.info("session resumed", session=name, namespace=self.namespace)

    async def children(self, name: str) -> list[str]:
        """``Kind/name`` of each Pod, Service, Secret, NetworkPolicy and
        PersistentVolumeClaim labelled as session ``name``'s (empty when all are gone)."""
        if self._api is None:
            raise RuntimeError("use KernelSessionClient as an async context manager")
        core, net = self._core, client.NetworkingV1Api(self._api)
        listers: tuple[tuple[str, Any], ...] = (
            ("Pod", core.list_namespaced_pod),
            ("Service", core.list_namespaced_service),
            ("Secret", core.list_namespaced_secret),
            ("NetworkPolicy", net.list_namespaced_network_policy),
            ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim),
        )
        found: list[str] = []
        for kind, lister in listers:
            items = (await lister(self.namespace, label_selector=f"{SESSION_LABEL}={name}")).items
            found.extend(f"{kind}/{item.metadata.name}" for item in items)
        return found

    async def lab_session(
        self,
        name: str,
        *,
        kernel_name: str = "python3",
        notebook_name: str | None = None,
        max_websocket_size: int | None = None,
        websocket_open_timeout: timedelta = timedelta(seconds=60),
        ping_interval: timedelta | float | None = timedelta(seconds=20),
        reconnect_timeout: timedelta | float | None = timedelta(seconds=10),
    ) -> JupyterLabSessionManager:
        """A :class:`JupyterLabSessionManager` for a Ready session (use with ``async with``).

        Raises:
            KernelSessionFailedError, KernelSessionNotFoundError, KernelSessionApiError:
                as :meth:`credentials`.
        """
        url, token, user = await self.credentials(name)
        return JupyterLabSessionManager(
            base_url=url,
            token=token,
            username=user,
            kernel_name=kernel_name,
            notebook_name=notebook_name,
            max_websocket_size=max_websocket_size,
            websocket_open_timeout=websocket_open_timeout,
            ping_interval=ping_interval,
            reconnect_timeout=reconnect_timeout,
            logger=self._log,
        )

    async def delete(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Delete a session (children go with it); with ``wait``, until it is gone.

        Raises:
            KernelSessionTimeoutError: still present after ``timeout`` seconds.
        """
        try:
            await self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        if not wait:
            return
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                await self.get(name)
            except KernelSessionNotFoundError:
                return
            await asyncio.sleep(delay)  # polling the condition, bounded by the deadline
            delay = min(delay * 2, 1.0)
        raise KernelSessionTimeoutError(
            f"KernelSession {self.namespace}/{name} still present after {timeout:g}s",
            name=name,
            namespace=self.namespace,
            last=None,
        )
