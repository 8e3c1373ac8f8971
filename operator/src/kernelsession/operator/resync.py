"""Deletions missed in a watch gap are noticed: every ``resync_interval`` the active
replica lists the sessions it serves and forgets those that no longer exist.

kopf re-lists after a watch error (an expired resourceVersion, HTTP 410) without saying
what vanished meanwhile, so a session deleted in the gap would keep its loop (and could
create children for an owner that is gone). Its children go with it by ownerReferences;
only the loop and the memory of it are this module's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.operator import metrics
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import Key

log = structlog.get_logger("kernelsession.operator")


def vanished(
    known_before: Iterable[Key], listed: Iterable[Key], answered: Iterable[str] | None = None
) -> list[Key]:
    """Sessions known before the list was asked for and absent from it (pure): a session
    first seen while the list was on its way is not judged by it, nor one in a namespace
    whose list was not ``answered`` (None: every namespace was)."""
    present = set(listed)
    judged = None if answered is None else set(answered)
    return sorted(
        k for k in set(known_before) if k not in present and (judged is None or k[0] in judged)
    )


async def resync_once(rt: Runtime) -> list[Key]:
    """List the sessions and forget the ones that are gone; returns their keys.

    With namespaces configured (patterns such as ``lab-*`` among them, which are no
    namespace one can list), the namespaces listed are those of the sessions this replica
    knows: only there can one have vanished. A namespace whose list is refused (its
    RoleBinding for the operator gone with it) is judged at a later round."""
    known = rt.sessions.keys()
    if not rt.settings.namespaces:
        listed = await rt.kube.session_keys(())
        gone = vanished(known, listed)
    else:
        listed, answered = [], []
        for ns in sorted({ns for ns, _ in known}):
            try:
                listed += await rt.kube.session_keys((ns,))
            except ApiException as exc:
                if exc.status != 403:
                    raise
                continue
            answered.append(ns)
        gone = vanished(known, listed, answered)
    for key in gone:
        state = rt.sessions.get(key)
        uid = state.body.get("metadata", {}).get("uid") if state else None
        rt.forget(key, uid)
        log.info("session gone; forgotten", namespace=key[0], session=key[1], missed_event=True)
        metrics.FORGOTTEN.inc()
    return gone


async def resync_loop(rt: Runtime) -> None:
    """Run :func:`resync_once` every ``resync_interval`` seconds while this replica acts."""
    while True:
        await asyncio.sleep(rt.settings.resync_interval)
        if not rt.active:
            continue
        try:
            await resync_once(rt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round tries again
            log.warning("session resync failed", error=f"{type(exc).__name__}: {exc}")
