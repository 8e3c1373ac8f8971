"""Leader election on a coordination.k8s.io Lease: with several replicas, one acts.

client-go's algorithm, small: every ``retry`` seconds the leader renews the Lease and
the others read it. A Lease is expired when this replica has not seen it change for
``duration`` seconds (its own clock: no trust in other nodes' clocks), or when its
renewTime is more than twice ``duration`` old (a stale Lease found at startup). A
leader that cannot renew within ``renew_deadline`` (2/3 of ``duration``) of sending its
last successful renewal stops acting before anyone else may start, whatever call hangs:
a timer steps it down, every Lease request has a deadline, and the writes' fence
(:meth:`LeaderElector.may_act`) checks the clock. A leader that stops cleanly releases
the Lease, so a standby takes over within ``retry`` seconds. After a crash: within
``duration`` + ``retry`` seconds (12 s with the defaults). docs/failover.md has the
design and the measured takeover times.

kubernetes_asyncio's ``leaderelection`` is not used: it awaits ``try_acquire_or_renew()``
without a deadline (a hung request stops the renew loop from ever checking its deadline)
and measures the deadline with the wall clock.

The decision (:func:`next_step`, :func:`lease_body`) is pure and unit-tested; the
:class:`LeaderElector` loop does the I/O. RBAC: get/update on this one Lease by name
and create in the operator's namespace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import structlog
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.operator import metrics
from kernelsession.operator.config import Settings
from kernelsession.operator.kube import Kube

log = structlog.get_logger("kernelsession.operator")

Step = Literal["create", "renew", "acquire", "wait"]


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    renew_time: datetime | None
    acquire_time: datetime | None
    duration: float
    transitions: int
    resource_version: str | None


def next_step(
    record: LeaseRecord | None,
    identity: str,
    *,
    now: datetime,
    unchanged_for: float,
    mine: bool = True,
) -> Step:
    """What this replica does about the Lease it read.

    ``unchanged_for``: seconds this replica has seen the Lease without a change.
    ``mine``: whether this process has held the Lease. One that holds it under this
    identity without having taken it is an earlier run of this replica (its container
    restarted, the pod name is the identity): it waits like any other holder, so the
    standby, whose watches are warm, takes over rather than a process that has listed
    nothing yet (as client-go's per-process identities do).
    """
    if record is None:
        return "create"
    if record.holder == identity and mine:
        return "renew"
    if not record.holder:
        return "acquire"  # released by a leader that stopped cleanly
    if unchanged_for >= record.duration:
        return "acquire"
    if record.renew_time is not None and (now - record.renew_time).total_seconds() > (
        2 * record.duration
    ):
        return "acquire"
    return "wait"


def _micro(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    name: str,
    namespace: str,
    identity: str,
    *,
    now: datetime,
    duration: float,
    previous: LeaseRecord | None,
    release: bool = False,
) -> dict[str, Any]:
    """The Lease this replica writes: holding it (renewed now), or released."""
    taking = previous is None or previous.holder != identity
    acquired = (
        now
        if taking or previous is None or previous.acquire_time is None
        else (previous.acquire_time)
    )
    transitions = (previous.transitions if previous else 0) + (
        1 if taking and previous is not None else 0
    )
    spec: dict[str, Any] = {
        "holderIdentity": None if release else identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": _micro(acquired),
        "renewTime": _micro(now),
        "leaseTransitions": transitions,
    }
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version:
        meta["resourceVersion"] = previous.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": spec,
    }


def read_record(lease: Any) -> LeaseRecord:
    """A LeaseRecord from a kubernetes_asyncio V1Lease."""
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or None,
        renew_time=spec.renew_time,
        acquire_time=spec.acquire_time,
        duration=float(spec.lease_duration_seconds or 15),
        transitions=int(spec.lease_transitions or 0),
        resource_version=lease.metadata.resource_version,
    )


class LeaderElector:
    """Runs the election; calls ``on_started``/``on_stopped`` as leadership changes.

    Leadership is valid until ``renew_deadline`` seconds after the last successful
    renewal was *sent* (this process's monotonic clock). A timer steps down at that
    moment, whatever the election loop is waiting for; every Lease request is bounded by
    ``call_timeout``; :meth:`may_act` (the writes' fence) compares the clock with the
    deadline itself, so a process frozen past it (SIGSTOP) refuses to write the moment
    it runs again, before any timer could fire.
    """

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
    ) -> None:
        self.api = kube.coordination
        self.name = settings.lease_name
        self.namespace = settings.lease_namespace
        self.identity = settings.leader_identity
        self.duration = settings.lease_duration
        self.retry = max(0.2, self.duration / 5)
        self.renew_deadline = self.duration * 2 / 3
        self.call_timeout = max(0.2, min(self.renew_deadline / 2, settings.api_timeout))
        """Seconds one election round (at most a read and a write) may take."""
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.leading = False
        self.record: LeaseRecord | None = None
        self._seen_version: str | None = None
        self._seen_since = time.monotonic()
        self._valid_until = 0.0
        self._expiry: asyncio.TimerHandle | None = None

    def may_act(self) -> bool:
        """Whether this replica may write now: it leads and its renew deadline has not
        passed (checked against the clock, not only the flag)."""
        return self.leading and time.monotonic() < self._valid_until

    async def run(self) -> None:
        """Forever (cancel to stop); never raises out."""
        log.info(
            "leader election",
            lease=f"{self.namespace}/{self.name}",
            identity=self.identity,
            renew_deadline=round(self.renew_deadline, 3),
        )
        try:
            while True:
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(self.call_timeout):
                        outcome = await self.attempt()
                except TimeoutError:
                    log.warning("lease request timed out", seconds=self.call_timeout)
                    outcome = "error"
                except Exception as exc:
                    log.warning("lease request failed", error=f"{type(exc).__name__}: {exc}")
                    outcome = "error"
                if outcome == "held":
                    self._renewed(sent)
                elif outcome == "lost" and self.leading:
                    self._step_down("the Lease is held by another replica")
                # "error": the expiry timer steps down at the renew deadline
                await asyncio.sleep(self.retry)
        finally:
            if self._expiry is not None:
                self._expiry.cancel()

    def _renewed(self, sent: float) -> None:
        """A renewal (or acquisition) sent at ``sent`` succeeded."""
        self._valid_until = sent + self.renew_deadline
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        # call_at uses the loop's clock (time.monotonic by default)
        self._expiry = loop.call_at(
            loop.time() + (self._valid_until - time.monotonic()), self._expire
        )
        if not self.leading:
            self._set(True)

    def _expire(self) -> None:
        self._expiry = None
        if self.leading and time.monotonic() >= self._valid_until:
            self._step_down("not renewed within the renew deadline")

    def _step_down(self, why: str) -> None:
        log.warning("stepping down", identity=self.identity, reason=why)
        self._set(False)

    def _set(self, leading: bool) -> None:
        self.leading = leading
        if not leading:
            self._valid_until = 0.0
        metrics.LEADER.set(1 if leading else 0)
        log.info("leadership " + ("acquired" if leading else "lost"), identity=self.identity)
        (self.on_started if leading else self.on_stopped)()

    async def attempt(self) -> Literal["held", "lost", "error"]:
        """One round: renew (leader) or read and maybe acquire (standby)."""
        now = datetime.now(UTC)
        if self.leading and self.record is not None:
            try:
                await self._write(now, self.record)
                return "held"
            except ApiException as exc:
                if exc.status != 409:
                    raise
        record = await self._read()
        step = next_step(
            record,
            self.identity,
            now=now,
            unchanged_for=time.monotonic() - self._seen_since,
            mine=self.record is not None,
        )
        if step == "wait":
            return "lost"
        try:
            await self._write(now, record)
        except ApiException as exc:
            if exc.status in (404, 409):
                return "lost"  # someone else was faster
            raise
        return "held"

    async def _read(self) -> LeaseRecord | None:
        try:
            lease = await self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.call_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        record = read_record(lease)
        if record.resource_version != self._seen_version:
            self._seen_version = record.resource_version
            self._seen_since = time.monotonic()
        return record

    async def _write(self, now: datetime, previous: LeaseRecord | None) -> None:
        body = cast(
            Any,
            lease_body(
                self.name,
                self.namespace,
                self.identity,
                now=now,
                duration=self.duration,
                previous=previous,
            ),
        )
        if previous is None:
            lease = await self.api.create_namespaced_lease(
                self.namespace, body, _request_timeout=self.call_timeout
            )
        else:
            lease = await self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self.call_timeout
            )
        self.record = read_record(lease)
        self._seen_version = self.record.resource_version
        self._seen_since = time.monotonic()

    async def release(self) -> None:
        """Give the Lease up (clean shutdown), so a standby takes over at once."""
        if not self.leading or self.record is None:
            return
        self.leading = False
        self._valid_until = 0.0
        metrics.LEADER.set(0)
        body: Mapping[str, Any] = lease_body(
            self.name,
            self.namespace,
            self.identity,
            now=datetime.now(UTC),
            duration=self.duration,
            previous=self.record,
            release=True,
        )
        try:
            await self.api.replace_namespaced_lease(
                self.name, self.namespace, cast(Any, body), _request_timeout=self.call_timeout
            )
            log.info("lease released", identity=self.identity)
        except Exception as exc:  # shutting down: the Lease expires anyway
            log.warning("lease not released", error=f"{type(exc).__name__}: {exc}")
