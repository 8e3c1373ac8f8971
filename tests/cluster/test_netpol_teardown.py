"""Removing the NetworkPolicy enforcer's chains: thousands at once (3,000 hollow pods
leave that many), in one transaction, and nothing that is not the enforcer's."""

from __future__ import annotations

import subprocess
import time

import pytest

from kernelsession.localcluster.host.netpol import iptables
from kernelsession.localcluster.host.netpol.rules import POD_CHAIN_PREFIX, RULE_CHAIN_PREFIX

FOREIGN = "KSTEST-FOREIGN"


def _restore(lines: list[str]) -> None:
    subprocess.run(
        ["iptables-restore", "-w", "5", "--noflush"],
        input="\n".join(["*filter", *lines, "COMMIT", ""]),
        text=True,
        check=True,
    )


def _chains(prefix: str) -> list[str]:
    return [c for c in iptables._existing_chains() if c.startswith(prefix)]


pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.mark.exclusive_node
def test_thousands_of_enforcer_chains_go_in_one_transaction_and_others_stay(
    exclusive_node: None,
) -> None:
    n = 2000
    pods = [f"{POD_CHAIN_PREFIX}T{i:05d}" for i in range(n)]
    rules = [f"{RULE_CHAIN_PREFIX}T{i:05d}" for i in range(n)]
    _restore(
        [f":{c} - [0:0]" for c in (*pods, *rules)]
        + [f"-A {p} -j {r}" for p, r in zip(pods, rules, strict=True)]  # chains jump to chains
        + [f":{FOREIGN} - [0:0]", f"-A {FOREIGN} -j RETURN"]
    )
    try:
        assert len(_chains(POD_CHAIN_PREFIX)) == n
        started = time.monotonic()
        iptables.remove_rules()
        took = time.monotonic() - started
        print(f"\n[netpol] {2 * n} chains removed in {took:.2f}s")
        assert _chains(POD_CHAIN_PREFIX) == []
        assert _chains(RULE_CHAIN_PREFIX) == []
        assert f":{FOREIGN} " in iptables.filter_table()  # not the enforcer's: kept
    finally:
        iptables.drop_chains(_chains(POD_CHAIN_PREFIX) + _chains(RULE_CHAIN_PREFIX))
        subprocess.run(["iptables", "-w", "5", "-F", FOREIGN], check=False)
        subprocess.run(["iptables", "-w", "5", "-X", FOREIGN], check=False)
    assert f":{FOREIGN} " not in iptables.filter_table()
