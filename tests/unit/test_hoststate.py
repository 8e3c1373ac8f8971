"""Host-state comparison (pure parts)."""

from __future__ import annotations

from kernelsession.localcluster.host.state import HostState, diff


def test_diff_lists_additions_removals_and_sysctl_changes() -> None:
    before = HostState(links=["lo", "eth0"], iptables=["-A FORWARD -j X"], sysctls={"a": "0"})
    after = HostState(
        links=["lo", "eth0", "ks0"], iptables=[], sysctls={"a": "1"}, cgroups=["/k/kubepods"]
    )
    changes = diff(before, after)
    assert "links: + ks0" in changes
    assert "iptables: - -A FORWARD -j X" in changes
    assert "sysctl a: 0 -> 1" in changes
    assert "cgroups: + /k/kubepods" in changes
    assert diff(after, after) == []
    assert HostState.from_json(after.to_json()) == after
