"""The lab gates of :mod:`decide` (pure): :func:`lab_pod` keeps the session's one lab pod
(the desired one, or an outdated one kept running until the rollout policy replaces it),
deletes the others and creates the desired one once they are gone; :func:`lab`, the last
gate, judges the lab (:func:`status.judge`), culls an idle one (:func:`culling.decide`)
and says when to look again.
"""

from __future__ import annotations

from kernelsession.client.resources import Reason
from kernelsession.operator import builders, culling, naming, rollout
from kernelsession.operator import status as st
from kernelsession.operator.actions import Create, Decision, DeletePod, Emit
from kernelsession.operator.gatepass import DEADLINE_MARGIN, Pass
from kernelsession.operator.observe import asks_lab
from kernelsession.operator.podview import PodView

RESUME_HINT = (
    " To start it again: kubectl annotate ks/{name} -n {ns} "
    f'{naming.RESUME_ANNOTATION}="$(date +%s)" --overwrite'
)
NO_HOME_NOTE = (
    " Its files are gone with it: the session has no spec.home volume, so nothing written "
    "in the lab is kept."
)

RECHECK_GROWTH = 10
"""The fallback look at a starting lab backs off to at most this many ``starting_recheck``."""


def lab_pod(p: Pass) -> Decision | None:
    """The session's lab: the desired pod, or an outdated one kept running (replaced by
    the rollout policy only when idle); delete the others; create the desired one once
    they are gone, unless the API refused it or it waits for its home volume."""
    obs = p.obs
    desired = obs.desired_pod
    assert desired is not None  # observed with the token (checked by the children gate)
    desired_name = desired["metadata"]["name"]
    labs = obs.labs
    mine = labs.current
    if (
        mine is not None
        and labs.outdated
        and mine.ready
        and rollout.may_replace_idle(p.cfg, obs.activity, obs.rollout_slots)
    ):
        p.rolled = mine.name
        p.events.append(Emit("RollingOut", rollout.ROLLING_MESSAGE.format(pod=mine.name)))
        labs = rollout.LabPods(None, (*labs.stale, mine))
    p.labs = labs
    p.actions.extend(
        DeletePod(pod.name, rollout=pod.name == p.rolled) for pod in labs.stale if not pod.deleting
    )
    if labs.current is not None:
        return None
    if desired_name in obs.rejected:
        return p.finish(st.pod_rejected(obs.rejected[desired_name]), requeue=p.cfg.cull_interval)
    if p.home_gate:
        verdict = st.Verdict(st.PENDING, Reason.HOME_PENDING, p.home_unbound or "")
        return p.finish(verdict, requeue=p.cfg.home_interval)
    if not labs.stale:
        # Only once the previous pod is gone: two labs never share the home volume, and
        # the node starts the new one with the current token Secret (its cache of a
        # Secret deleted and created again under the same name can lag, and a lab
        # started with the old token refuses the new one for good).
        p.actions.append(Create(desired))
    return None


def lab(p: Pass) -> Decision:
    """Judge the lab pod; cull an idle lab; fail one that never answered."""
    obs, cfg, spec = p.obs, p.cfg, p.obs.spec
    labs = p.labs or rollout.LabPods(None, obs.pods)
    mine, outdated = labs.current, labs.outdated
    start_timeout = int(spec.get("startTimeoutSeconds") or cfg.default_start_timeout)
    verdict = st.judge(
        mine,
        image=spec.get("image") or cfg.default_image,
        probe_ok=obs.activity is not None,
        probe_error=obs.probe_error,
        now=obs.now,
        start_timeout=start_timeout,
        rolling=bool(labs.stale),
        unschedulable_grace=cfg.unschedulable_grace,
        home_unbound=p.home_unbound,
    )
    if p.rolled is not None:
        verdict = st.Verdict(
            st.STARTING, Reason.ROLLING, "Replacing the idle lab pod to apply the new template."
        )
    pod: PodView | None = mine
    warned = p.warned_before
    last_activity = culled_time = None
    cull_due = culling.ANY_MOMENT  # when the clock alone changes the culling decision
    if verdict.ready and obs.activity is not None and mine is not None:
        last_activity = st.activity_to_write(
            (obs.body.get("status") or {}).get("lastActivity"),
            obs.activity.latest(),
            cfg.activity_resolution,
        )
        idle_timeout, max_age = culling.limits(spec, cfg)
        cull = culling.decide(
            obs.activity,
            idle_timeout=idle_timeout,
            max_age=max_age,
            started=st.parse_time(mine.created),
            now=obs.now,
            warning=cfg.cull_warning,
            cull_connected=cfg.cull_connected,
        )
        # an outdated lab the rollout policy replaces once idle: idle is no deadline
        cull_due = culling.ANY_MOMENT if outdated and cfg.rollout == "idle" else cull.due
        if cull.action == "keep":
            warned = False
        elif cull.action == "warn":
            if not warned:
                p.events.append(Emit("CullingSoon", cull.message))
            warned = True
        else:
            message = cull.message + RESUME_HINT.format(name=obs.name, ns=obs.namespace)
            if spec.get("home") is None:
                message += NO_HOME_NOTE
            p.after_status.append(DeletePod(mine.name, cull_reason=cull.reason))
            p.events.append(Emit("Culled", message))
            verdict = st.Verdict(st.CULLED, cull.reason, message)
            culled_time, pod = st.fmt_time(obs.now), None
    if verdict.phase == st.FAILED and verdict.reason == Reason.START_TIMEOUT and mine is not None:
        p.actions.append(DeletePod(mine.name))
        pod = None
    requeue = _requeue(p, verdict, mine, start_timeout, cull_due)
    # The route serves the path the operator's settings give; a lab started under other
    # settings serves its own until its next start: no external URL that would not reach it.
    external = builders.external_url(obs.body, cfg)
    if pod is not None and pod.base_path != builders.base_path(obs.body, cfg):
        external = None
    return p.finish(
        verdict,
        requeue=requeue,
        pod=pod,
        url=builders.lab_url(
            obs.body, cfg, pod.pod_ip if pod else None, base=pod.base_path if pod else None
        ),
        external_url=external,
        last_activity=last_activity,
        culled_time=culled_time,
        warned=warned,
        up_to_date=None if pod is None else not outdated,
    )


def _requeue(
    p: Pass, verdict: st.Verdict, pod: PodView | None, start_timeout: int, cull_due: float
) -> float:
    """When to look again unless something wakes the session sooner.

    A Ready lab: when its next culling deadline falls due (``cull_due``,
    ``culling.CullDecision.due``),
    and at least every ``max(cull_interval, activity_resolution)`` (its
    ``status.lastActivity``, a token that stopped working); every cull interval while a
    client is connected to an idle kernel (it may leave at any moment). A culled lab:
    every cull interval. A lab whose pod is Ready
    but whose API did not answer yet: soon (``starting_interval``), nothing else would
    tell. Any other lab not Ready follows its pod by watch (created, scheduled, started,
    Ready, restarted, gone: each event wakes its session): it is looked at by the clock
    only when its start timeout or unschedulable grace falls due, and, should an event be
    missed, after ``starting_recheck`` or the pod's age, whichever is longer (each look
    doubles the wait; at most ``RECHECK_GROWTH`` times ``starting_recheck``).
    """
    cfg, now = p.cfg, p.obs.now
    if verdict.ready:
        if cull_due == culling.ANY_MOMENT:
            return cfg.cull_interval
        return min(max(cfg.cull_interval, cfg.activity_resolution), cull_due + DEADLINE_MARGIN)
    if verdict.phase == st.CULLED:
        return cfg.cull_interval
    if verdict.reason == Reason.HOME_PENDING:
        return cfg.home_interval
    if asks_lab(pod) and verdict.phase != st.FAILED:
        return cfg.starting_interval
    created = st.parse_time(pod.created) if pod is not None else None
    due: list[float] = []  # seconds until a deadline that changes the verdict by itself
    if created is not None and verdict.phase != st.FAILED:
        due.append((created - now).total_seconds() + start_timeout)
    if pod is not None and verdict.reason == Reason.WAITING_FOR_CAPACITY:
        since = st.parse_time(pod.unschedulable_since) or created
        if since is not None:
            due.append((since - now).total_seconds() + cfg.unschedulable_grace)
    # The fallback look backs off with the pod's age (looks at 30, 60, 120, 240 s, at
    # most RECHECK_GROWTH rechecks apart): a start the node takes minutes over (many labs
    # at once) is not looked at every 30 s for nothing; its own events wake it anyway.
    recheck = cfg.starting_recheck
    if created is not None:
        age = (now - created).total_seconds()
        recheck = min(max(recheck, age), RECHECK_GROWTH * cfg.starting_recheck)
    # a moment past the deadline, so that the pass looking then sees it passed
    return min([recheck, *(d + DEADLINE_MARGIN for d in due if d > 0)])
