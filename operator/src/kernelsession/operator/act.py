"""Act: carry out a :class:`~decide.Decision` with idempotent API calls.

Creating what exists and deleting what is gone are not errors. A child this process
created is not created again until the watch shows it (the watch lags under load), or
``CREATE_MEMORY`` seconds passed (it was deleted before it was seen). A child the API
server refuses is remembered (observe hands it to the next decision) and the session
is looked at again at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog

from kernelsession.operator import builders, metrics
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Create,
    CreateToken,
    Decision,
    Delete,
    DeletePod,
    Emit,
    GrantTokenAccess,
    Patch,
    RecordSpawn,
    WriteStatus,
)
from kernelsession.operator.errors import NotLeading, PermanentError, SessionGone
from kernelsession.operator.kube import ChildRejected
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import SessionState, TokenRecord

log = structlog.get_logger("kernelsession.operator")

CREATE_MEMORY = 60.0


async def event(
    rt: Runtime, body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
) -> None:
    """Post an Event about the session as part of the pass (so it is fenced by the Lease
    and cancelled with the pass); a failure to post is logged, never fails the pass."""
    kind = "Warning" if warning else "Normal"
    try:
        await rt.kube.post_event(body, kind, reason, message)
    except NotLeading:
        raise
    except Exception as exc:  # events are auxiliary
        log.warning("event not posted", reason=reason, error=f"{type(exc).__name__}: {exc}")


async def act(rt: Runtime, state: SessionState, decision: Decision) -> float:
    """Carry out ``decision`` in order; seconds until the next pass.

    Raises:
        PermanentError: the API server refused a Service, NetworkPolicy or Ingress.
        Exception: an API call failed (the pass is retried with back-off).
    """
    body = state.body
    ns, name = state.key
    requeue = decision.requeue_after
    for action in decision.actions:
        if isinstance(action, CreateToken):
            # No read first to see that the session still exists: a session deleted in
            # a watch gap is forgotten by the resync or when another one of its name
            # arrives, and what its pass made meanwhile is owned by its uid, so the
            # garbage collector removes it (a request per start saved).
            token = builders.new_token()
            state.token_create_tried = True
            uid = await rt.kube.create(builders.token_secret(body, token))
            if uid is not None:  # no Event: the lab's "Ready" says it started
                state.token = TokenRecord(
                    uid=uid, token=token, checked=time.monotonic(), unused=True
                )
        elif isinstance(action, Create):
            if state.recently_created(action.name, CREATE_MEMORY):
                continue
            try:
                uid = await rt.kube.create(action.manifest)
            except ChildRejected as exc:
                if action.kind not in ("Pod", "PersistentVolumeClaim"):
                    raise PermanentError(str(exc)) from None
                state.rejected[action.name] = (exc.message, time.monotonic())
                requeue = 0.0
                continue
            state.note_created(action.name)
            if action.kind == "Pod" and state.token is not None:
                state.token.unused = False  # its next pod re-reads it first
            if uid is not None:
                log.info("child created", kind=action.kind, name=action.name, session=name)
                if action.kind == "Pod" and not st.first_start(body.get("status") or {}):
                    # a lab's first pod is announced by its Ready event; a pod made
                    # again (deleted, spec change, resume, rollout) by this one
                    await event(rt, body, "Created", f"Created lab pod {action.name}")
        elif isinstance(action, GrantTokenAccess):
            try:
                await rt.kube.create(action.role)
                if await rt.kube.create(action.binding) is None:  # it exists: its subjects
                    patch = {"subjects": action.binding["subjects"]}
                    binding = action.binding["metadata"]["name"]
                    await rt.kube.patch("RoleBinding", ns, binding, patch)
            except ChildRejected as exc:
                raise PermanentError(str(exc)) from None
            state.token_readers = action.subjects
        elif isinstance(action, Patch):
            try:
                patched = await rt.kube.patch(action.kind, ns, action.name, action.patch)
            except ChildRejected as exc:
                raise PermanentError(str(exc)) from None
            if patched:
                log.info("child restored", kind=action.kind, name=action.name, session=name)
                await event(
                    rt, body, "Restored", f"Put {action.kind} {action.name} back into shape"
                )
            else:  # changed meanwhile (or gone): the watch brings it, look again then
                requeue = min(requeue, rt.settings.starting_interval)
        elif isinstance(action, Delete):
            await rt.kube.delete(action.kind, ns, action.name)
            log.info("child deleted", kind=action.kind, name=action.name, session=name)
        elif isinstance(action, DeletePod):
            if action.cull_reason:
                log.info("culling lab", namespace=ns, session=name, reason=action.cull_reason)
                metrics.CULLS.labels(action.cull_reason).inc()
            else:
                log.info(
                    "deleting lab pod",
                    namespace=ns,
                    session=name,
                    pod=action.name,
                    rollout=action.rollout,
                )
            if action.rollout:
                state.rolling_out = True
            await rt.kube.delete_pod(ns, action.name)
        elif isinstance(action, WriteStatus):
            updated = await rt.kube.patch_status(ns, name, action.patch)
            if updated is None:
                raise SessionGone(f"{ns}/{name}")
            state.remember(updated)
            state.status_written = time.monotonic()
            metrics.STATUS_WRITES.inc()
            if action.previous != action.phase or "reason" in action.patch:
                log.info(
                    "phase changed",
                    namespace=ns,
                    session=name,
                    phase=action.phase,
                    reason=action.reason,
                    previous=action.previous,
                )
        elif isinstance(action, Emit):
            await event(rt, body, action.reason, action.message, warning=action.warning)
        elif isinstance(action, RecordSpawn):
            metrics.SPAWN_SECONDS.observe(action.seconds)
    state.warned = decision.warned
    state.phase = decision.phase
    if decision.phase not in (st.PENDING, st.STARTING) and not decision.of(DeletePod):
        state.rolling_out = False  # its new lab is Ready (or will not be): free the slot
    return requeue
