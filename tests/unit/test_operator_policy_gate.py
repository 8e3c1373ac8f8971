"""The decision's policy gate, pure: a spec that breaks the namespace's session rules
never gets a lab pod (Failed/PolicyRejected naming the field); a lab already running when
a rule tightens keeps running with condition PolicyViolation; the token-reader grant; a
lab pod never carries a kernelsession.dev/* label from spec.podLabels."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_decide import CFG, UID, obs, pod, session

from kernelsession.operator import labpod, policy
from kernelsession.operator.actions import Create, DeletePod, GrantTokenAccess
from kernelsession.operator.decide import decide
from kernelsession.operator.observe import PolicyView

STRICT = PolicyView(policy.parse({"images": "good/*"}))
STEAL = {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "bob-token", "key": "t"}}}]}


def _conditions(status: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_breaking_spec_gets_no_pod_and_names_the_field() -> None:
    body = session(STEAL)
    decision = decide(obs(body, rules=STRICT), CFG)
    assert decision.phase == "Failed"
    assert decision.status is not None
    assert decision.status["reason"] == "PolicyRejected"
    assert "spec.env[0].valueFrom.secretKeyRef.name" in decision.status["message"]
    assert not [a for a in decision.of(Create) if a.kind == "Pod"]


def test_a_running_lab_keeps_running_when_a_rule_tightens() -> None:
    body = session({"image": "bad/lab:1"})
    running = pod(body)
    decision = decide(obs(body, rules=STRICT, pods=(running,), activity=None), CFG)
    assert not decision.of(DeletePod)
    assert decision.status is not None
    violation = _conditions(decision.status)["PolicyViolation"]
    assert violation["status"] == "True"
    assert "spec.image" in violation["message"]


def test_the_next_start_of_such_a_lab_is_refused() -> None:
    body = session({"image": "bad/lab:1"})
    decision = decide(obs(body, rules=STRICT), CFG)
    assert decision.phase == "Failed"
    assert not [a for a in decision.of(Create) if a.kind == "Pod"]


def test_a_lab_of_an_older_spec_is_not_killed_by_a_refused_change() -> None:
    old = session()
    running = pod(old)
    body = session(STEAL, generation=2)
    decision = decide(obs(body, rules=STRICT, pods=(running,)), CFG)
    assert decision.phase == "Failed"
    assert not decision.of(DeletePod)
    assert decision.status is not None
    assert running.name in decision.status["message"]


def test_a_conforming_spec_starts_and_its_user_may_read_the_token() -> None:
    body = session({"image": "good/lab:1"})
    rules = PolicyView(policy.parse({"images": "good/*", "userMapping": "stripSuffix=@x.org"}))
    decision = decide(obs(body, rules=rules), CFG)
    assert [a for a in decision.of(Create) if a.kind == "Pod"]
    (grant,) = decision.of(GrantTokenAccess)
    assert grant.subjects == ("alice", "alice@x.org")
    assert grant.role["rules"][0]["resourceNames"] == ["alice-token"]
    assert [s["name"] for s in grant.binding["subjects"]] == ["alice", "alice@x.org"]
    granted = decide(obs(body, rules=rules, token_readers=grant.subjects), CFG)
    assert not granted.of(GrantTokenAccess)


def test_the_lab_pod_is_created_before_its_token_readers_are_granted() -> None:
    """The lab starts two requests sooner; its NetworkPolicy still comes before it."""
    body = session({"image": "good/lab:1"})
    rules = PolicyView(policy.parse({"images": "good/*"}))
    kinds = [
        a.kind if isinstance(a, Create) else type(a).__name__
        for a in decide(obs(body, rules=rules, has_service=False, policy=None), CFG).actions
        if isinstance(a, Create | GrantTokenAccess)
    ]
    assert kinds == ["Service", "NetworkPolicy", "Pod", "GrantTokenAccess"]


def test_in_a_profiles_namespace_the_owners_binding_reads_the_token() -> None:
    body = session()  # spec.user alice
    own = PolicyView(policy.parse({"owner": "User alice"}))
    assert not decide(obs(body, rules=own), CFG).of(GrantTokenAccess)
    team = PolicyView(policy.parse({"owner": "Group physics"}))  # members share, by design
    assert not decide(obs(body, rules=team), CFG).of(GrantTokenAccess)
    # a session an admin (verb assign) made there for someone else: that user reads it
    other = PolicyView(policy.parse({"owner": "User carol"}))
    (grant,) = decide(obs(body, rules=other), CFG).of(GrantTokenAccess)
    assert grant.subjects == ("alice",)


def test_a_malformed_owner_line_is_named() -> None:
    for line in ("alice", "Robot alice", "User "):
        with pytest.raises(policy.PolicyConfigError, match="owner: "):
            policy.parse({"owner": line})


def test_a_malformed_configmap_refuses_new_starts_naming_the_key() -> None:
    broken = PolicyView(None, error="maxCPU: 'lots' is not a quantity")
    decision = decide(obs(session(), rules=broken), CFG)
    assert decision.status is not None
    assert "maxCPU" in decision.status["message"]


def test_lab_pod_never_carries_a_kernelsession_label_from_pod_labels() -> None:
    body = session({"podLabels": {"kernelsession.dev/client": "true", "team": "a"}})
    labels = labpod.lab_pod(body, CFG, UID)["metadata"]["labels"]
    assert "kernelsession.dev/client" not in labels
    assert labels["team"] == "a"
