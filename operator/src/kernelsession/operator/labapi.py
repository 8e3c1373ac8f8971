"""What the operator asks a lab over HTTP: does it answer with the token, and how active is it.

The token is sent in the Authorization header only; it never appears in a URL, a log
or an error message produced here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from kernelsession.operator.status import parse_time

MAX_ANSWER_BYTES = 1 << 20
"""The most of one lab answer the operator reads (a lab with thousands of kernels fits)."""
DEFAULT_DEADLINE = 5.0
"""Seconds for one whole probe (both requests), however slowly the lab sends."""


@dataclass(frozen=True)
class KernelActivity:
    execution_state: str
    connections: int
    last_activity: datetime | None


@dataclass(frozen=True)
class LabActivity:
    """The lab's own view of its activity (``/api/status`` and ``/api/kernels``)."""

    last_activity: datetime | None
    started: datetime | None
    kernels: tuple[KernelActivity, ...]

    @property
    def busy(self) -> bool:
        return any(k.execution_state == "busy" for k in self.kernels)

    @property
    def connections(self) -> int:
        return sum(k.connections for k in self.kernels)

    def latest(self) -> datetime | None:
        stamps = [t for t in [self.last_activity, *(k.last_activity for k in self.kernels)] if t]
        return max(stamps) if stamps else None


class LabUnreachable(Exception):
    """The lab did not answer, or answered without accepting the token.

    ``status`` is the HTTP status when the lab answered (401/403: token refused).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def token_refused(self) -> bool:
        return self.status in (401, 403)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def _get_json(
    http: httpx.AsyncClient, url: str, token: str, max_bytes: int = MAX_ANSWER_BYTES
) -> Any:
    """GET ``url`` and parse its JSON, reading at most ``max_bytes`` of the body."""
    where = url.split("?")[0]
    try:
        async with http.stream("GET", url, headers=_headers(token)) as response:
            if response.status_code != 200:
                raise LabUnreachable(
                    f"HTTP {response.status_code} from {where}", response.status_code
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise LabUnreachable(f"answer of {declared} bytes from {where} (limit {max_bytes})")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise LabUnreachable(f"answer larger than {max_bytes} bytes from {where}")
    except httpx.HTTPError as exc:
        raise LabUnreachable(f"{type(exc).__name__} from {where}") from None
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise LabUnreachable(f"non-JSON answer from {where}") from None


async def probe(http: httpx.AsyncClient, base_url: str, token: str) -> Mapping[str, Any]:
    """``GET api/status`` with the token.

    Raises:
        LabUnreachable: no answer, or not 200 (e.g. 403 for a wrong token).
    """
    data = await _get_json(http, base_url + "api/status", token)
    if not isinstance(data, dict):
        raise LabUnreachable("api/status did not return an object")
    return data


async def reaches(
    http: httpx.AsyncClient, base_url: str, token: str, *, attempt: float, within: float
) -> None:
    """``GET api/status`` through a path that may not be there yet, in short attempts
    each on a new connection, until one answers or ``within`` seconds have passed.

    A Service whose rules kube-proxy has not programmed yet drops the packets: one
    connection would hang in TCP's SYN retransmits (1 s, then 3 s) long after the rules
    are there; a new attempt every ``attempt`` seconds gets through within ``attempt`` of
    them.

    Raises:
        LabUnreachable: no attempt answered (the last one's error); at once when the lab
            answered with an error status (e.g. 403: the token is refused).
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        started = loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(attempt, end - started))):
                await probe(http, base_url, token)
            return
        except TimeoutError:
            error = LabUnreachable(f"no answer from {base_url}api within {attempt:g}s")
        except LabUnreachable as exc:
            if exc.status is not None:
                raise
            error = exc
        if loop.time() >= end:
            raise error
        await asyncio.sleep(max(0.0, min(started + attempt, end) - loop.time()))


def parse_activity(status: Mapping[str, Any], kernels: list[Mapping[str, Any]]) -> LabActivity:
    """Build :class:`LabActivity` from the two API answers (pure)."""
    return LabActivity(
        last_activity=parse_time(status.get("last_activity")),
        started=parse_time(status.get("started")),
        kernels=tuple(
            KernelActivity(
                execution_state=str(k.get("execution_state") or "unknown"),
                connections=int(k.get("connections") or 0),
                last_activity=parse_time(k.get("last_activity")),
            )
            for k in kernels
        ),
    )


async def activity(
    http: httpx.AsyncClient,
    base_url: str,
    token: str,
    *,
    deadline: float = DEFAULT_DEADLINE,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> LabActivity:
    """The lab's activity, without counting this request as activity. Bounded: both
    requests together within ``deadline`` seconds (a lab that trickles bytes holds no
    slot longer), each body at most ``max_bytes`` (a huge answer is not read).

    Raises:
        LabUnreachable: the lab did not answer both requests in time and in size.
    """
    try:
        async with asyncio.timeout(deadline):
            status = await _get_json(http, base_url + "api/status", token, max_bytes)
            if not isinstance(status, dict):
                raise LabUnreachable("api/status did not return an object")
            kernels = await _get_json(
                http, base_url + "api/kernels?no_track_activity=1", token, max_bytes
            )
    except TimeoutError:
        raise LabUnreachable(
            f"no complete answer from {base_url}api within {deadline:g}s"
        ) from None
    if not isinstance(kernels, list):
        raise LabUnreachable("api/kernels did not return a list")
    return parse_activity(status, kernels)
