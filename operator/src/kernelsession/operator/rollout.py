"""Which pod is a session's lab, and when an outdated one may be replaced (pure).

A lab pod is named after a hash of its whole template (the session's spec and the
operator's defaults and code) and labelled with a hash of the session's spec alone
(:func:`labpod.spec_hash`). A running pod whose spec hash still matches is the
session's lab even when the operator's template moved on (an upgrade, a settings
change): it keeps running, marked outdated (status condition ``UpToDate`` False,
``TemplateChanged``), and the new template applies at its next start: after a spec
change, a resume or unsuspend, a cull, or under ``KERNELSESSION_ROLLOUT=idle`` once it is
idle (no busy kernel, no connection), a few labs at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kernelsession.operator.config import Settings
from kernelsession.operator.labapi import LabActivity
from kernelsession.operator.podview import PodView

ROLLING_MESSAGE = (
    "Replacing the idle lab {pod} to apply the operator's new template "
    "(KERNELSESSION_ROLLOUT=idle; no kernel was busy and no client was connected)."
)


@dataclass(frozen=True)
class LabPods:
    current: PodView | None
    """The pod that serves the session: the desired one, or an outdated one kept."""
    stale: tuple[PodView, ...]
    """Pods to delete (or being deleted)."""
    outdated: bool = False
    """Whether ``current`` runs an older template than the operator's."""


def keepable(pod: PodView) -> bool:
    """An outdated pod is kept only while its lab runs: one that is pending, failing or
    exited has no work to lose and starts again with the new template."""
    return not pod.deleting and pod.running and pod.phase == "Running"


def choose(
    pods: Iterable[PodView], desired_name: str, spec_digest: str, *, restart: bool
) -> LabPods:
    """Split the session's pods into its lab and the pods to delete.

    ``restart``: the user asked for a fresh start (the resume annotation): an outdated
    pod is not kept. A pod without a spec hash (made by an operator before it labelled
    one) counts as matching the spec: an upgrade never restarts it.
    """
    found = list(pods)
    exact = next((p for p in found if p.name == desired_name), None)
    if exact is not None:
        return LabPods(exact, tuple(p for p in found if p is not exact))
    if not restart:
        kept = [p for p in found if p.spec_hash in (spec_digest, None) and keepable(p)]
        if kept:
            current = max(kept, key=lambda p: p.created or "")
            return LabPods(current, tuple(p for p in found if p is not current), outdated=True)
    return LabPods(None, tuple(found))


def may_replace_idle(cfg: Settings, activity: LabActivity | None, slots: int) -> bool:
    """Whether the rollout policy replaces an outdated lab now: only with
    ``KERNELSESSION_ROLLOUT=idle``, a lab that answered, has no busy kernel and no
    connection, and a free slot (``KERNELSESSION_ROLLOUT_MAX`` labs at a time)."""
    return (
        cfg.rollout == "idle"
        and slots > 0
        and activity is not None
        and not activity.busy
        and activity.connections == 0
    )
