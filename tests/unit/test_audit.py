"""The audit-log parser, on lines saved from a real local-cluster run (operator as its
service account: one session created, Ready, culled by maxAge; then a denied read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernelsession.localcluster.cluster import audit

FIXTURE = Path(__file__).parent / "fixtures" / "audit.log"
OPERATOR = audit.service_account("kernelsession-system", "kernelsession-operator")


def test_service_account_user_name() -> None:
    assert OPERATOR == "system:serviceaccount:kernelsession-system:kernelsession-operator"


def test_filters_by_user() -> None:
    everyone = audit.read(FIXTURE)
    operator = audit.read(FIXTURE, user=OPERATOR)
    assert {e.user for e in operator} == {OPERATOR}
    assert len(everyone) - len(operator) == 2


def test_counts_by_verb_and_resource_with_subresource() -> None:
    counts = audit.count(audit.read(FIXTURE, user=OPERATOR))
    assert counts["patch kernelsessions/status"] == 7
    assert counts["create events"] == 4
    assert counts["watch pods"] == 1
    assert counts["delete pods"] == 1


def test_non_resource_requests_count_under_their_path() -> None:
    counts = audit.count(audit.read(FIXTURE, user=OPERATOR))
    assert counts["get /api"] == 1


def test_writes_and_reads() -> None:
    entries = audit.read(FIXTURE, user=OPERATOR)
    write_keys = {e.key for e in audit.writes(entries)}
    assert write_keys == {
        "create secrets",
        "create events",
        "create services",
        "create networkpolicies",
        "create pods",
        "patch kernelsessions/status",
        "delete pods",
    }
    assert {e.verb for e in audit.reads(entries)} == {"get", "list", "watch"}


def test_denied_requests_carry_403() -> None:
    denied = audit.denied(audit.read(FIXTURE, user=OPERATOR))
    assert [(e.key, e.namespace) for e in denied] == [("list secrets", "default")]


def test_entry_fields() -> None:
    pod = next(e for e in audit.read(FIXTURE, user=OPERATOR) if e.key == "create pods")
    assert (pod.namespace, pod.api_group, pod.code, pod.stage) == (
        "labs",
        "",
        201,
        "ResponseComplete",
    )


def test_watch_is_logged_when_it_starts() -> None:
    watch = next(e for e in audit.read(FIXTURE, user=OPERATOR) if e.key == "watch pods")
    assert watch.stage == "ResponseStarted"


def test_partial_and_foreign_lines_are_skipped() -> None:
    lines = ['{"kind": "Event", "verb": "get"', "", "not json", '{"kind": "EventList"}']
    assert list(audit.parse(lines)) == []


def test_offset_reads_only_later_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    text = FIXTURE.read_text()
    first, rest = text.split("\n", 1)
    log.write_text(first + "\n")
    offset = audit.size(log)
    log.write_text(first + "\n" + rest)
    assert len(audit.read(log, offset=offset)) == len(audit.read(FIXTURE)) - 1
    assert audit.size(tmp_path / "missing.log") == 0


def test_user_agent_tells_the_operator_from_kubectl_as_its_account() -> None:
    agents = {e.user_agent.split("/")[0] for e in audit.read(FIXTURE, user=OPERATOR)}
    assert agents == {"kopf", "OpenAPI-Generator", "kubectl"}


def test_a_log_rotated_after_the_offset_is_an_error_not_an_empty_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(FIXTURE.read_bytes())
    offset = audit.size(log)
    log.write_bytes(FIXTURE.read_bytes()[:100])  # rotated: a new, shorter file
    with pytest.raises(audit.AuditLogRotated, match="shorter than offset"):
        audit.read(log, offset=offset)


def test_the_api_server_never_rotates_the_audit_log_during_a_run() -> None:
    # kube-apiserver's --audit-log-maxsize is in MB and 0 means lumberjack's 100 MB
    from kernelsession.localcluster.cluster import controlplane

    assert controlplane.AUDIT_LOG_MAX_MB >= 100_000
