"""Applying a rendering to the host's filter table (``iptables-restore --noflush``, stale
chains removed, the jumps first in FORWARD and INPUT) and removing the enforcer's rules."""

from __future__ import annotations

import subprocess

from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host.netpol.rules import (
    EGRESS_CHAIN_PREFIX,
    HOOKS,
    MAIN_CHAIN,
    POD_CHAIN_PREFIX,
    RULE_CHAIN_PREFIX,
    drifted,
)


def filter_table() -> str:
    """``iptables-save -t filter``: the filter table as text ('' when it cannot be read)."""
    return subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False
    ).stdout


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )


def _restore(lines: list[str]) -> subprocess.CompletedProcess[str]:
    """``lines`` applied to the filter table in one ``iptables-restore --noflush``."""
    return subprocess.run(
        ["iptables-restore", "-w", "5", "--noflush"],
        input="\n".join(["*filter", *lines, "COMMIT", ""]),
        capture_output=True,
        text=True,
        check=False,
    )


def _existing_chains() -> list[str]:
    saved = filter_table()
    prefixes = (MAIN_CHAIN, POD_CHAIN_PREFIX, EGRESS_CHAIN_PREFIX, RULE_CHAIN_PREFIX)
    return [
        line[1:].split()[0]
        for line in saved.splitlines()
        if line.startswith(":") and line[1:].startswith(prefixes)
    ]


def _unhook(hook: str, chain: str) -> None:
    while _iptables("-D", hook, "-j", chain).returncode == 0:
        pass


def apply(chains: list[str], body: list[str]) -> None:
    """Install the rendered chains atomically, remove stale ones and the INPUT jump when no
    pod is egress-isolated, then put the jumps at the top of FORWARD (always) and INPUT
    (while some pod is egress-isolated), right after the node's guards
    (:mod:`.hostnet`): ahead of the jumps kube-proxy and the kubelet install, whose
    ``ESTABLISHED`` and masquerade-mark accepts would otherwise come first.

    Raises RuntimeError with iptables-restore's message.
    """
    result = _restore([*(f":{c} - [0:0]" for c in chains), *body])
    if result.returncode != 0:
        raise RuntimeError(f"iptables-restore: {result.stderr.strip()}")
    for hook, chain in HOOKS:
        if chain not in chains:
            _unhook(hook, chain)
    drop_chains(sorted(set(_existing_chains()) - set(chains)))
    saved = filter_table()
    if any(" does not start with " in problem for problem in drifted(chains, body, saved)):
        for hook, chain in HOOKS:  # first, then the node's guards go back ahead of them
            if chain in chains:
                hostnet.hook_first("iptables", hook, chain)
        hostnet.keep_guards_first()


def drop_chains(chains: list[str]) -> None:
    """Flush and delete ``chains`` in one ``iptables-restore`` transaction; one by one
    should that be refused (a chain still referenced from outside them stays).

    One iptables call rewrites the whole table: chain by chain, removing the chains of
    3,000 hollow pods took minutes; in one transaction it is one rewrite.
    """
    if not chains:
        return
    if _restore([*(f"-F {c}" for c in chains), *(f"-X {c}" for c in chains)]).returncode == 0:
        return
    for chain in chains:
        _iptables("-F", chain)
    for chain in chains:
        _iptables("-X", chain)


def remove_rules() -> None:
    """Remove the FORWARD and INPUT jumps and every chain of the enforcer (idempotent)."""
    for hook, chain in HOOKS:
        _unhook(hook, chain)
    drop_chains(_existing_chains())
