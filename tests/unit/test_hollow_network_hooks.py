"""Where the hollow network hooks its chain (pure): inside the node's guard chain, so the
NetworkPolicy enforcer's drift check still finds the guard, then its own chain, first in
FORWARD (were the hooks first in FORWARD, the enforcer would re-apply every second and put
the guard back ahead of them, and the guard drops pod traffic to the hollow range)."""

from __future__ import annotations

from kernelsession.localcluster.hollow.netns import CHAIN, GUARD_CHAIN, HollowNetwork
from kernelsession.localcluster.host.netpol.rules import MAIN_CHAIN, drifted, render
from kernelsession.localcluster.host.network import INPUT_GUARD_CHAIN


def _table(hook_commands: list[list[str]], chains: list[str], body: list[str]) -> str:
    """``iptables-save -t filter`` after the node, the enforcer and the hollow network."""
    rules: dict[str, list[str]] = {
        "INPUT": [f"-A INPUT -j {INPUT_GUARD_CHAIN}"],
        "FORWARD": [f"-A FORWARD -j {GUARD_CHAIN}", f"-A FORWARD -j {MAIN_CHAIN}"],
        GUARD_CHAIN: [f"-A {GUARD_CHAIN} -s 10.244.0.0/16 ! -o ks0 -j DROP"],
        CHAIN: [f"-A {CHAIN} -j {MAIN_CHAIN}", f"-A {CHAIN} -j ACCEPT"],
    }
    for args in hook_commands:
        assert args[:3:2] == ["-I", "1"]
        rules.setdefault(args[1], []).insert(0, " ".join(["-A", args[1], *args[3:]]))
    declared = ["INPUT", "FORWARD", "OUTPUT", GUARD_CHAIN, INPUT_GUARD_CHAIN, CHAIN, *chains]
    lines = ["*filter", *(f":{c} - [0:0]" for c in declared)]
    for chain_rules in rules.values():
        lines += chain_rules
    return "\n".join([*lines, *body, "COMMIT"])


def test_hooks_inside_the_guard_leave_the_enforcer_nothing_to_repair() -> None:
    net = HollowNetwork()
    chains, body = render([], {}, [])
    commands = net.hook_commands(guard=True)
    assert {args[1] for args in commands} == {GUARD_CHAIN}
    assert len(commands) == len(net.hooks())
    assert drifted(chains, body, _table(commands, chains, body)) == []


def test_hooks_first_in_forward_would_be_repaired_away() -> None:
    chains, body = render([], {}, [])
    commands = HollowNetwork().hook_commands(guard=False)
    assert {args[1] for args in commands} == {"FORWARD"}
    assert any(
        p.startswith("FORWARD ") for p in drifted(chains, body, _table(commands, chains, body))
    )
