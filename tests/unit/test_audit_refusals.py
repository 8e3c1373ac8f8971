"""Which of an account's 403s name a missing grant (the RBAC test's reading of the log)."""

from __future__ import annotations

from kernelsession.localcluster.cluster import audit

OP = "system:serviceaccount:kernelsession-system:kernelsession-operator"
GC = "system:serviceaccount:kube-system:generic-garbage-collector"


def entry(
    verb: str,
    resource: str,
    namespace: str,
    name: str,
    second: int,
    code: int = 200,
    decision: str = "allow",
    user: str = OP,
) -> audit.Entry:
    return audit.Entry(
        verb=verb,
        resource=resource,
        namespace=namespace,
        name=name,
        api_group="",
        user=user,
        code=code,
        stage="ResponseComplete",
        time=f"2026-12-05T12:00:{second:02d}.000000Z",
        decision=decision,
    )


def refused(verb: str, resource: str, namespace: str, name: str, second: int) -> audit.Entry:
    return entry(verb, resource, namespace, name, second, code=403, decision="forbid")


def test_a_refusal_in_a_namespace_bound_by_the_manifests_counts() -> None:
    mine = [refused("create", "secrets", "labs", "a-token", 1)]
    assert audit.unexplained_refusals(mine, mine, "kernelsession-operator") == mine


def test_a_refusal_retried_into_success_does_not_count() -> None:
    mine = [
        refused("create", "secrets", "labs", "a-token", 1),
        entry("create", "secrets", "labs", "a-token", 3, code=201),
        refused("create", "secrets", "labs", "b-token", 4),
        entry("create", "secrets", "labs", "a-token", 5, code=201),  # another object's
    ]
    assert audit.unexplained_refusals(mine, mine, "kernelsession-operator") == [mine[2]]


def test_a_quota_refusal_is_admissions_not_rbacs() -> None:
    quota = entry("create", "pods", "lab-dana", "q2-lab", 1, code=403, decision="allow")
    assert audit.unexplained_refusals([quota], [quota], "kernelsession-operator") == []


def test_a_refusal_while_the_accounts_own_binding_was_missing_does_not_count() -> None:
    binding = "kernelsession-operator"
    before = refused("get", "secrets", "lab-x", "t", 1)
    during = refused("get", "secrets", "lab-x", "t", 3)
    after_gc = refused("create", "pods", "lab-x", "p", 6)
    after_ns = refused("get", "secrets", "lab-y", "t", 9)
    mine = [before, during, after_gc, after_ns]
    everyone = [
        *mine,
        entry("create", "rolebindings", "lab-x", binding, 2, code=201),
        entry("delete", "rolebindings", "lab-x", binding, 5, user=GC),
        entry("create", "rolebindings", "lab-y", binding, 7, code=201),
        entry("delete", "namespaces", "", "lab-y", 8),
    ]
    assert audit.unexplained_refusals(mine, everyone, binding) == [during]
