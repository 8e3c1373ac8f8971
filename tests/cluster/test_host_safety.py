"""The node touches only what it created: decoys made before it starts (a network namespace
with its mount, a ``CNI-*`` chain with a jump to it, a route for the service range and one
elsewhere) survive its teardown and the cleanup after a crashed node; a bridge of the node's
name that is not the node's stops the start with a clear error and stays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.cluster.nodehost import NodeError
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.host.network import BRIDGE, SERVICE_RANGE

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CRASHING_NODE = """
import os, signal
from kernelsession.localcluster.cluster import LocalCluster
cluster = LocalCluster()
cluster.start()
lab = cluster.image_refs["lab"]
cluster.kubectl("run", "orphan", f"--image={lab}", "--command", "--", "sleep", "3600")
cluster.kubectl("wait", "--for=condition=Ready", "pod/orphan", "--timeout=120s")
print("READY", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no teardown at all
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def decoys() -> Iterator[list[str]]:
    """Host state that is not the node's, made before it starts; removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    netns = f"ks-decoy-{tag}"
    chain = f"CNI-DECOY-{tag}".upper()
    routes = [
        ["unreachable", SERVICE_RANGE],  # the very range the node routes: replaced, restored
        ["blackhole", "198.18.0.0/24"],  # a test range nobody routes
    ]
    netns_dir_existed = Path("/run/netns").exists()
    netns_was_mount = os.path.ismount("/run/netns")
    jump = ["POSTROUTING", "-s", "198.18.0.0/24", "-j", chain]
    made: list[str] = []  # what this fixture made, undone in reverse whatever fails
    try:
        _run("ip", "netns", "add", netns)  # a network namespace, bind-mounted under /run/netns
        made.append("netns")
        _run("iptables", "-w", "5", "-t", "nat", "-N", chain)
        made.append("chain")
        _run("iptables", "-w", "5", "-t", "nat", "-A", *jump)
        made.append("jump")
        for i, route in enumerate(routes):
            _run("ip", "route", "add", *route)
            made.append(f"route{i}")
        yield [netns, chain]
    finally:
        for i, route in enumerate(routes):
            if f"route{i}" in made:
                subprocess.run(["ip", "route", "del", *route], check=False, capture_output=True)
        if "jump" in made:
            subprocess.run(
                ["iptables", "-w", "5", "-t", "nat", "-D", *jump], check=False, capture_output=True
            )
        if "chain" in made:
            subprocess.run(["iptables", "-w", "5", "-t", "nat", "-X", chain], check=False)
        if "netns" in made:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        if not netns_was_mount:  # `ip netns` made /run/netns a mount of its own
            subprocess.run(["umount", "/run/netns"], check=False, capture_output=True)
        if not netns_dir_existed:
            subprocess.run(["rmdir", "/run/netns"], check=False, capture_output=True)


def _decoys_present(names: list[str]) -> None:
    netns, chain = names
    state = hoststate.snapshot()
    assert netns in state.netns
    assert any(m.endswith(f"/netns/{netns}") for m in state.mounts)
    assert any(line.startswith(f":{chain} ") for line in state.iptables)
    assert any(f"-j {chain}" in rule for rule in state.iptables)
    assert f"unreachable {SERVICE_RANGE}" in state.routes
    assert any(r.startswith("blackhole 198.18.0.0/24") for r in state.routes)


@pytest.mark.exclusive_node
def test_teardown_and_crash_cleanup_leave_what_is_not_the_nodes(
    exclusive_node: None, decoys: list[str]
) -> None:
    before = hoststate.snapshot()
    _decoys_present(decoys)

    cluster = LocalCluster()
    cluster.start()
    try:
        # while it runs, the service range is the node's (the decoy route replaced)
        route = subprocess.run(
            ["ip", "route", "show", "exact", SERVICE_RANGE], capture_output=True, text=True
        ).stdout
        assert f"dev {BRIDGE}" in route
    finally:
        assert cluster.stop() == []
    assert hoststate.diff(before, hoststate.snapshot()) == []

    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_NODE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "READY" in crashed.stdout, crashed.stderr[-3000:]
    assert crashed.returncode == -signal.SIGKILL
    assert hoststate.diff(before, hoststate.snapshot()) != []  # the crash left its state
    cluster = LocalCluster()
    cluster.start()  # cleans up after the crashed node first
    assert cluster.stop() == []
    assert hoststate.diff(before, hoststate.snapshot()) == []
    _decoys_present(decoys)


@pytest.mark.exclusive_node
def test_a_bridge_that_is_not_the_nodes_stops_the_start(exclusive_node: None) -> None:
    before = hoststate.snapshot()
    # someone else's bridge of that name (a bridge: the one link type every node has)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    try:
        cluster = LocalCluster()
        with pytest.raises(NodeError, match=f"{BRIDGE} exists"):
            cluster.start()
        assert Path(f"/sys/class/net/{BRIDGE}").exists()  # left as it was
        shown = subprocess.run(
            ["ip", "-d", "addr", "show", BRIDGE], capture_output=True, text=True
        ).stdout
        assert "bridge" in shown
        assert "inet " not in shown  # not given the node's address
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], check=False)
    assert hoststate.diff(before, hoststate.snapshot()) == []
