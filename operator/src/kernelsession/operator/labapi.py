"""What the operator asks a lab over HTTP: does it answer with the token, and how active is it.

The token is sent in the Authorization header only; it never appears in a URL, a log
or an error message produced here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from kernelsession.operator.status import parse_time


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


async def _get_json(http: httpx.AsyncClient, url: str, token: str) -> Any:
    try:
        response = await http.get(url, headers=_headers(token))
    except httpx.HTTPError as exc:
        raise LabUnreachable(f"{type(exc).__name__} from {url.split('?')[0]}") from None
    if response.status_code != 200:
        raise LabUnreachable(
            f"HTTP {response.status_code} from {url.split('?')[0]}", response.status_code
        )
    try:
        return response.json()
    except ValueError:
        raise LabUnreachable(f"non-JSON answer from {url.split('?')[0]}") from None


async def probe(http: httpx.AsyncClient, base_url: str, token: str) -> Mapping[str, Any]:
    """``GET api/status`` with the token.

    Raises:
        LabUnreachable: no answer, or not 200 (e.g. 403 for a wrong token).
    """
    data = await _get_json(http, base_url + "api/status", token)
    if not isinstance(data, dict):
        raise LabUnreachable("api/status did not return an object")
    return data


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


async def activity(http: httpx.AsyncClient, base_url: str, token: str) -> LabActivity:
    """The lab's activity, without counting this request as activity.

    Raises:
        LabUnreachable: the lab did not answer both requests.
    """
    status = await probe(http, base_url, token)
    kernels = await _get_json(http, base_url + "api/kernels?no_track_activity=1", token)
    if not isinstance(kernels, list):
        raise LabUnreachable("api/kernels did not return a list")
    return parse_activity(status, kernels)
