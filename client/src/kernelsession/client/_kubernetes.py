"""``KernelSessionClient``: KernelSession resources from code (kubernetes_asyncio).

Create a session, follow its progress, wait until it is Ready, open a
:class:`JupyterLabSessionManager` from its status and token Secret, delete it. The
token is read from the Secret named in ``status.tokenSecretName`` and is never logged
or put in an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import structlog
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ._reach import reachable_url
from ._session import JupyterLabSessionManager

__all__ = [
    "KernelSessionClient",
    "KernelSessionError",
    "KernelSessionFailedError",
    "KernelSessionNotFoundError",
    "KernelSessionStatus",
    "KernelSessionTimeoutError",
]

GROUP = "kernelsession.dev"
VERSION = "v1alpha1"
PLURAL = "kernelsessions"
DEFAULT_NAMESPACE = "labs"


class KernelSessionError(Exception):
    """Base of the errors about KernelSession resources (not the lab's code)."""

    def __init__(self, message: str, *, name: str, namespace: str) -> None:
        super().__init__(message)
        self.name = name
        self.namespace = namespace


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


@dataclass(frozen=True)
class KernelSessionStatus:
    """What the operator reports about a session (``status``), typed."""

    name: str
    namespace: str
    user: str
    phase: str | None
    ready: bool
    reason: str | None = None
    message: str | None = None
    url: str | None = None
    token_secret_name: str | None = None
    pod_name: str | None = None
    observed_generation: int | None = None
    generation: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KernelSessionStatus:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            user=(obj.get("spec") or {}).get("user", ""),
            phase=status.get("phase"),
            ready=ready,
            reason=status.get("reason"),
            message=status.get("message"),
            url=status.get("url"),
            token_secret_name=status.get("tokenSecretName"),
            pod_name=status.get("podName"),
            observed_generation=status.get("observedGeneration"),
            generation=meta.get("generation"),
            raw=obj,
        )

    @property
    def current(self) -> bool:
        """Whether the status describes the latest spec."""
        return self.observed_generation is not None and self.observed_generation == self.generation

    def describe(self) -> str:
        text = f"{self.namespace}/{self.name}: {self.phase or 'Unknown'}"
        if self.reason:
            text += f" ({self.reason})"
        if self.message:
            text += f": {self.message}"
        return text


async def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, ``$KUBECONFIG``, or the in-cluster service account."""
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        await config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


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
        logger: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self.namespace = namespace
        self._kubeconfig = kubeconfig
        self._api = api_client
        self._owns_api = api_client is None
        self._log = logger or structlog.get_logger("kernelsession.client")

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
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KernelSession",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": spec,
        }
        obj = await self._custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"
        )
        self._log.info("session created", session=name, namespace=self.namespace, user=user)
        return KernelSessionStatus.from_object(obj)

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
        return KernelSessionStatus.from_object(obj)

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
                        yield KernelSessionStatus.from_object(obj)
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
            if status.phase in ("Failed", "Culled"):
                raise KernelSessionFailedError(
                    status.describe(),
                    name=name,
                    namespace=self.namespace,
                    phase=status.phase,
                    reason=status.reason,
                )
        raise KernelSessionTimeoutError(
            f"KernelSession {self.namespace}/{name} not Ready after {timeout:g}s; last: "
            + (last.describe() if last else "no status"),
            name=name,
            namespace=self.namespace,
            last=last,
        )

    async def credentials(self, name: str) -> tuple[str, str, str]:
        """(url, token, user) of a Ready session; the token comes from its Secret. A
        Service DNS name that does not resolve here is replaced by the Service's cluster IP
        (see :mod:`._reach`).

        Raises:
            KernelSessionFailedError: the session is not Ready (phase and reason inside).
            KernelSessionNotFoundError: no such session.
        """
        status = await self.get(name)
        if not (status.ready and status.url and status.token_secret_name):
            raise KernelSessionFailedError(
                f"KernelSession is not Ready: {status.describe()}",
                name=name,
                namespace=self.namespace,
                phase=status.phase or "Unknown",
                reason=status.reason,
            )
        secret = await self._core.read_namespaced_secret(status.token_secret_name, self.namespace)
        raw = (secret.data or {}).get("token")
        if not raw:
            raise KernelSessionFailedError(
                f"Secret {status.token_secret_name} has no token",
                name=name,
                namespace=self.namespace,
                phase=status.phase or "Unknown",
                reason="TokenMissing",
            )
        url = await reachable_url(status.url, self._core)
        return url, base64.b64decode(raw).decode(), status.user

    async def lab_session(
        self,
        name: str,
        *,
        kernel_name: str = "python3",
        notebook_name: str | None = None,
        max_websocket_size: int | None = None,
        websocket_open_timeout: timedelta = timedelta(seconds=60),
    ) -> JupyterLabSessionManager:
        """A :class:`JupyterLabSessionManager` for a Ready session (use with ``async with``).

        Raises:
            KernelSessionFailedError, KernelSessionNotFoundError: as :meth:`credentials`.
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


def api_message(exc: ApiException) -> str:
    """The API server's message (e.g. which field a 422 names), without the raw body."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)
