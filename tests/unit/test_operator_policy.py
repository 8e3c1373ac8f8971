"""The operator's own check of the session rules (kernelsession.operator.policy), over the
table tests/policy_cases.yaml that the admission policy runs through as well
(tests/operator/test_admission.py), plus the parsing of the ConfigMap."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernelsession.operator import policy

TABLE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[1] / "policy_cases.yaml").read_text()
)
CASES: list[dict[str, Any]] = TABLE["cases"]


def lookups(user: str, rules: policy.Policy) -> policy.Lookups:
    """The table's world as the operator would look it up for spec.user ``user``."""
    world = TABLE["world"]
    readable: set[tuple[str, str]] = set()
    for identity in policy.identities(user, rules):
        for item in world["readable"].get(identity, []):
            kind, _, name = item.partition("/")
            readable.add((kind, name))
    return policy.Lookups(frozenset(readable), dict(world["claims"]))


def verdict(case: dict[str, Any]) -> list[str]:
    """Every refusal for ``case``: admission's user rule, then the spec rules."""
    rules = policy.parse(TABLE["policies"][case.get("policy", "strict")])
    spec = {"user": "alice", **case["spec"]}
    requester = case.get("as", "alice")
    problems: list[str] = []
    refusal = policy.user_refusal(
        requester, spec["user"], rules, assign=requester in TABLE["world"]["assign"]
    )
    if refusal:
        problems.append(refusal)
    problems += policy.violations(case["name"], spec, rules, lookups(spec["user"], rules))
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_table(case: dict[str, Any]) -> None:
    problems = verdict(case)
    expected = case.get("refused")
    if expected is None:
        assert problems == [], problems
    else:
        assert problems, f"{case['name']} was accepted"
        assert any(p.startswith(expected + ":") for p in problems), problems


def test_every_rule_has_an_accepted_and_a_refused_case() -> None:
    """Each rule's field appears in a refused case, and the same field in an accepted one."""
    refused = {c["refused"].split("[")[0].split(".")[1] for c in CASES if "refused" in c}
    accepted: set[str] = set()
    for case in CASES:
        if "refused" not in case:
            accepted |= set(case["spec"]) or {"user"}
    assert refused <= accepted | {"user"}, refused - accepted
    assert {"user", "env", "volumes", "podLabels", "image", "tolerations"} <= refused
    assert {"nodeSelector", "resources", "culling"} <= refused


def test_parse_defaults_and_values() -> None:
    default = policy.parse(None)
    assert default.images is None
    assert not default.tolerations
    assert not default.node_selector
    assert default.max_cpu is None
    assert not default.culling_never_allowed
    rules = policy.parse(TABLE["policies"]["strict"])
    assert rules.max_memory == Decimal(4 * 2**30)
    assert rules.max_cpu == Decimal(2)
    assert rules.max_idle_timeout == 7200
    assert ("pool", "labs") in rules.node_selector
    assert rules.user_mapping == (("stripSuffix", "@example.com"), ("stripPrefix", "oidc:"))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"maxCPU": "lots"}, "maxCPU"),
        ({"maxIdleTimeoutSeconds": "1h"}, "maxIdleTimeoutSeconds"),
        ({"userMapping": "lower"}, "userMapping"),
        ({"nodeSelector": "pool"}, "nodeSelector"),
    ],
)
def test_parse_refuses_malformed_values_naming_the_key(data: dict[str, str], key: str) -> None:
    with pytest.raises(policy.PolicyConfigError, match=key):
        policy.parse(data)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        (3, Decimal(3)),
        ("1Gi", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("100Ki", Decimal(102400)),
    ],
)
def test_quantity(text: object, value: Decimal) -> None:
    assert policy.quantity(text) == value


def test_quantity_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        policy.quantity("lots")


def test_user_mapping_and_identities() -> None:
    rules = policy.parse({"userMapping": "stripSuffix=@example.com\nstripPrefix=oidc:"})
    assert policy.map_user("alice", rules) == "alice"
    assert policy.map_user("alice@example.com", rules) == "alice"
    assert policy.map_user("oidc:alice", rules) == "alice"
    assert policy.map_user("alice@other.org", rules) is None
    assert policy.map_user("Alice", rules) is None
    assert policy.identities("alice", rules) == ["alice", "alice@example.com", "oidc:alice"]
    assert policy.identities("alice", policy.parse(None)) == ["alice"]


def test_references_list_every_secret_configmap_and_claim_with_its_path() -> None:
    spec = TABLE["cases"][0]["spec"] | {
        "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "volumes": [
            {"name": "c", "configMap": {"name": "cm"}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "s2"}}]}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "pvc"}},
        ],
    }
    assert [(r.kind, r.name, r.path) for r in policy.references(spec)] == [
        ("Secret", "s", "spec.env[0].valueFrom.secretKeyRef.name"),
        ("ConfigMap", "cm", "spec.volumes[0].configMap.name"),
        ("Secret", "s2", "spec.volumes[1].projected.sources[0].secret.name"),
        ("PersistentVolumeClaim", "pvc", "spec.volumes[2].persistentVolumeClaim.claimName"),
    ]


def test_to_look_up_skips_allowlisted_and_token_names() -> None:
    rules = policy.parse({"secrets": "shared"})
    spec = {
        "user": "alice",
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "shared", "key": "k"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "bob-token", "key": "k"}}},
            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "k"}}},
        ],
    }
    assert [r.name for r in policy.to_look_up(spec, rules, "lab")] == ["mine"]
