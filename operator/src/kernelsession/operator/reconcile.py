"""One pass over a session: observe -> decide -> act.

Level-based and idempotent: desired state from the session, observed state from kopf's
watch-fed indexes and the lab's API; the pure :func:`decide.decide` says what differs;
status is written only when the rendered status differs from the stored one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kernelsession.operator.act import act
from kernelsession.operator.decide import decide
from kernelsession.operator.observe import ChildView, observe
from kernelsession.operator.podview import PodView
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import SessionState


async def reconcile(
    rt: Runtime,
    state: SessionState,
    pods: Iterable[PodView],
    has_service: bool,
    policy: ChildView | None,
    ingress: ChildView | None = None,
    claim: Mapping[str, Any] | None = None,
    token_readers: tuple[str, ...] | None = None,
) -> float:
    """Run one pass for the session of ``state``; seconds until the next one is due."""
    obs = await observe(rt, state, list(pods), has_service, policy, ingress, claim, token_readers)
    return await act(rt, state, decide(obs, rt.settings))
