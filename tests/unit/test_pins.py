"""The Go programs' pins and their one module graph (building.pins, hack/lib-build.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernelsession.localcluster.building import binaries, nodebinaries, pins
from kernelsession.localcluster.cluster import addons

ROOT = Path(__file__).resolve().parents[2]


def test_the_recorded_digest_is_the_scripts_digest() -> None:
    # a build script changed without pins.SCRIPTS_SHA256 would reuse caches built the old way
    assert pins.scripts_sha256(ROOT) == pins.SCRIPTS_SHA256, (
        "hack/lib-build.sh, build-controlplane.sh or build-node.sh changed: set "
        f"pins.SCRIPTS_SHA256 = {pins.scripts_sha256(ROOT)!r}"
    )


def test_both_cache_keys_change_with_any_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    before = (binaries.cache_dir(), nodebinaries.node_cache_dir())
    assert before[0].name.endswith(pins.graph_key())
    assert before[1].name.endswith(pins.graph_key())
    # the node's pin raises shared dependencies of the control plane's build too
    monkeypatch.setattr(pins, "CONTAINERD_VERSION", "v2.2.10")
    after = (binaries.cache_dir(), nodebinaries.node_cache_dir())
    assert after[0] != before[0]
    assert after[1] != before[1]
    monkeypatch.setattr(pins, "SCRIPTS_SHA256", "f" * 64)
    assert binaries.cache_dir() not in (before[0], after[0])


def test_the_builds_get_every_pin() -> None:
    env = pins.graph_env()
    for script in pins.GRAPH_SCRIPTS:
        text = (ROOT / script).read_text()
        for name in re.findall(r"\$\{?(KS_[A-Z_]+_VERSION)", text):
            assert name in env, f"{script} reads {name}, which graph_env() does not set"
    assert env["KS_K8S_VERSION"] == pins.K8S_VERSION


def _corefile_plugins() -> set[str]:
    """The plugin names the cluster's Corefile uses (first word of each line in a server
    block, not inside a plugin's own block)."""
    text = addons.corefile("cluster.local", "10.0.0.10", 8181, Path("/kubeconfig"))
    plugins: set[str] = set()
    depth = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 1 and line != "}":
            plugins.add(line.split()[0])
        depth += line.count("{") - line.count("}")
    return plugins


def test_coredns_is_built_with_every_plugin_the_corefile_uses() -> None:
    main = (ROOT / "hack" / "lib-build.sh").read_text()
    block = main[main.index("dnsserver.Directives") :]
    directives = set(re.findall(r'"([a-z0-9_]+)"', block[: block.index("}")]))
    imported = set(re.findall(r'"github\.com/coredns/coredns/plugin/([a-z0-9_]+)"', main))
    used = _corefile_plugins()
    assert {"bind", "kubernetes", "cache", "template", "ready", "errors"} <= used
    assert used <= directives, f"the Corefile uses {sorted(used - directives)}, not built in"
    assert directives <= imported, f"directives without their plugin: {directives - imported}"


def test_no_build_script_pipes_into_a_reader_that_stops_early() -> None:
    # under `set -o pipefail`, `prog --version | head -1` fails the build with 141 (SIGPIPE)
    # whenever prog writes after head has exited: a CI run lost a finished 243 s build to it
    for script in sorted((ROOT / "hack").glob("*.sh")):
        text = script.read_text()
        if "pipefail" not in text:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"\|\s*(head|grep -q|grep -m)\b", code), (
                f"{script.name}:{number}: {line.strip()}"
            )
