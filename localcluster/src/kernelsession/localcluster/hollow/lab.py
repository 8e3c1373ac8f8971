"""The hollow lab: one aiohttp server answering the Jupyter REST API the operator reads
(``api/status``, ``api/kernels``, ``api/sessions`` under the lab's base path) for every
KWOK pod, each at its own pod IP, each checked against that pod's own token.

Which pod a request is for is the address it was sent to (the socket's local address):
the hollow network routes the whole KWOK pod range to a namespace where every address in
it is local, and the server listens on all of them. A request for an address no lab owns
gets 404; a request without the pod's own token (another pod's, or none) gets 403, like a
real jupyter-server. Tokens are compared in constant time and never logged.

Kernel activity is what the bench sets (:meth:`HollowLab.set_activity`, or ``POST
/hollow/activity`` on the control site): execution state and last-activity time, per pod
or for all, so culling can be driven; with ``start_busy`` every new lab reports a busy
kernel (a lab in use) until then. Requests the operator makes with
``no_track_activity`` do not count as activity, as in jupyter-server.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

KERNEL_ID = "00000000-0000-4000-8000-000000000001"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@dataclass
class LabEntry:
    """One hollow lab: its pod, token, base path and kernel activity."""

    pod: str
    token: str
    base: str = "/"
    started: datetime = field(default_factory=_now)
    last_activity: datetime = field(default_factory=_now)
    execution_state: str = "idle"
    connections: int = 0

    def status(self) -> dict[str, Any]:
        return {
            "started": _iso(self.started),
            "last_activity": _iso(self.last_activity),
            "connections": self.connections,
            "kernels": 1,
        }

    def kernels(self) -> list[dict[str, Any]]:
        return [
            {
                "id": KERNEL_ID,
                "name": "python3",
                "last_activity": _iso(self.last_activity),
                "execution_state": self.execution_state,
                "connections": self.connections,
            }
        ]


def entry_from_pod(pod: Mapping[str, Any], secret_data: Mapping[str, str]) -> LabEntry | None:
    """The lab entry of a session's pod: its token from ``secret_data`` (the Secret the
    pod's ``JUPYTER_TOKEN`` references, already decoded) and its base path from
    ``--ServerApp.base_url``. None for a pod that is not a lab (no such env)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        for env in container.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
            if env.get("name") == "JUPYTER_TOKEN" and ref.get("key") in secret_data:
                base = "/"
                for arg in container.get("args") or []:
                    if str(arg).startswith("--ServerApp.base_url="):
                        base = str(arg).split("=", 1)[1]
                base = base if base.endswith("/") else base + "/"
                name = (pod.get("metadata") or {}).get("name", "")
                return LabEntry(pod=str(name), token=secret_data[ref["key"]], base=base)
    return None


def request_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request presents: ``Authorization: token X`` (or ``Bearer``), else
    ``?token=``."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return query.get("token") or None


def token_ok(entry: LabEntry, presented: str | None) -> bool:
    """Whether ``presented`` is this lab's own token (constant-time)."""
    if not presented:
        return False
    return hmac.compare_digest(entry.token.encode(), presented.encode())


class HollowLab:
    """The labs by pod IP and the aiohttp application serving them."""

    def __init__(self, *, start_busy: bool = False) -> None:
        self.labs: dict[str, LabEntry] = {}
        self.requests = 0
        self.refused = 0
        self.start_busy = start_busy
        """New labs report a busy kernel (in use until the bench says otherwise)."""

    def add(self, ip: str, entry: LabEntry) -> None:
        if self.start_busy:
            entry.execution_state = "busy"
        self.labs[ip] = entry

    def remove(self, ip: str) -> None:
        self.labs.pop(ip, None)

    def set_activity(
        self,
        *,
        ip: str | None = None,
        execution_state: str | None = None,
        last_activity: datetime | None = None,
        connections: int | None = None,
    ) -> int:
        """Set the kernel activity of one lab (``ip``) or of all; returns how many."""
        targets = [self.labs[ip]] if ip is not None and ip in self.labs else []
        if ip is None:
            targets = list(self.labs.values())
        for entry in targets:
            if execution_state is not None:
                entry.execution_state = execution_state
            if last_activity is not None:
                entry.last_activity = last_activity
            if connections is not None:
                entry.connections = connections
        return len(targets)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        entry = self.labs.get(str(sock[0])) if sock else None
        if entry is None:
            return web.json_response({"message": "no hollow lab at this address"}, status=404)
        path = request.path
        if not path.startswith(entry.base):
            return web.json_response({"message": "Not Found"}, status=404)
        if not token_ok(entry, request_token(request.headers, request.query)):
            self.refused += 1
            return web.json_response({"message": "Forbidden"}, status=403)
        rest = path[len(entry.base) :].rstrip("/")
        if rest == "api":
            return web.json_response({"version": "2.21.0-hollow"})
        if rest == "api/status":
            return web.json_response(entry.status())
        if rest == "api/kernels":
            if "no_track_activity" not in request.query:
                entry.last_activity = _now()
            return web.json_response(entry.kernels())
        if rest == "api/sessions":
            return web.json_response([])
        return web.json_response({"message": "Not Found"}, status=404)

    async def _control(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        when = body.get("last_activity")
        count = self.set_activity(
            ip=body.get("ip"),
            execution_state=body.get("execution_state"),
            last_activity=datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None,
            connections=body.get("connections"),
        )
        return web.json_response({"updated": count})

    async def _stats(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"labs": len(self.labs), "requests": self.requests, "refused": self.refused}
        )

    def app(self) -> web.Application:
        """The labs' application (every path, every method answered from the entry)."""
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._serve)
        return application

    def control_app(self) -> web.Application:
        """The bench's control site (loopback only): set activity, read counters."""
        application = web.Application()
        application.router.add_post("/hollow/activity", self._control)
        application.router.add_get("/hollow/stats", self._stats)
        return application
