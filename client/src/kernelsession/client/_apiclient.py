"""A kubernetes_asyncio ``ApiClient`` whose every request has a deadline.

kubernetes_asyncio passes ``aiohttp.ClientTimeout()`` (no limit at all) unless a call
gives ``_request_timeout``: a request to an API server that stopped answering (a
partition, a frozen proxy) waits forever. :class:`DeadlineApiClient` gives every request
without its own ``_request_timeout`` a total deadline, and turns the timeout into
:class:`KubernetesDeadlineError` naming the request (never its body or credentials).
Long requests (watches) pass their own ``_request_timeout``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from kubernetes_asyncio import client

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a request to the API server may take in all (connect, send, answer)."""
TIMEOUT_ENV = "KERNELSESSION_API_TIMEOUT"


def api_timeout_from_env() -> float:
    """``$KERNELSESSION_API_TIMEOUT`` (seconds, > 0) or the default; a malformed value is
    ignored (the default applies)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, ""))
    except ValueError:
        return DEFAULT_REQUEST_TIMEOUT
    return value if value > 0 else DEFAULT_REQUEST_TIMEOUT


class KubernetesDeadlineError(TimeoutError):
    """A request to the Kubernetes API server did not complete within its deadline.

    Attributes:
        method: The HTTP method.
        path: The request path (no query, no host).
        seconds: The deadline.
    """

    def __init__(self, method: str, path: str, seconds: float) -> None:
        super().__init__(
            f"the Kubernetes API server did not answer {method} {path} within {seconds:g} s"
        )
        self.method = method
        self.path = path
        self.seconds = seconds


class DeadlineApiClient(client.ApiClient):
    """``ApiClient`` with a default total deadline of ``request_timeout`` seconds."""

    def __init__(
        self,
        configuration: client.Configuration | None = None,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(configuration)
        self.request_timeout = request_timeout

    async def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Any = None,
        post_params: Any = None,
        body: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> Any:
        timeout = _request_timeout or self.request_timeout
        seconds = _total(timeout)
        try:
            # The outer deadline also covers what aiohttp's own timeout may not (e.g. a
            # connection pool that never frees a slot); a little later than aiohttp's.
            async with asyncio.timeout(None if seconds is None else seconds + 1.0):
                return await super().request(
                    method,
                    url,
                    query_params=query_params,
                    headers=headers,
                    post_params=post_params,
                    body=body,
                    _preload_content=_preload_content,
                    _request_timeout=timeout,
                )
        except TimeoutError as exc:
            if isinstance(exc, KubernetesDeadlineError):
                raise
            raise KubernetesDeadlineError(
                method.upper(), urlsplit(url).path, seconds or 0.0
            ) from None


def _total(timeout: Any) -> float | None:
    """The total seconds of a ``_request_timeout`` (None: a (connect, read) pair)."""
    if isinstance(timeout, aiohttp.ClientTimeout):
        return timeout.total
    if isinstance(timeout, int | float):
        return float(timeout)
    return None
