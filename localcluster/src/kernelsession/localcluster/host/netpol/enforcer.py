"""The enforcer's process: watches Pods, Namespaces and NetworkPolicies, renders their
rules on every change (debounced), applies them, and applies them again when someone else
changed the filter table. The rules stay when it exits (fail closed)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kernelsession.localcluster.host.netpol.iptables import apply, filter_table
from kernelsession.localcluster.host.netpol.policy import Obj, node_dns_stand_in
from kernelsession.localcluster.host.netpol.rules import drifted, render

HEAL_INTERVAL = 1.0
"""Seconds between two checks that the applied rules are still in the filter table (at
least: see :data:`HEAL_SHARE`)."""
HEAL_SHARE = 0.1
"""At most this share of the enforcer's time goes to those checks: with thousands of
pods an ``iptables-save`` and its reading take a few hundred ms, and a check every second
took a third of a core for as long as the node ran."""
COALESCE = 0.05
"""Seconds a burst of watch events is gathered before the rules are rendered (at least:
see :data:`APPLY_SHARE`)."""
APPLY_SHARE = 0.33
"""At most this share of the enforcer's time goes to rendering and applying: at 3,000
pods and policies a rendering and its ``iptables-restore`` take 1-2 s, and rendering
again 50 ms after each while pods keep changing took 250 CPU s of a 2-core machine while
3,000 sessions were created."""


def pace(least: float, spent: float, share: float) -> float:
    """Seconds to wait after work that took ``spent`` seconds, so that such work takes
    at most ``share`` of the time; never less than ``least``. Pure.

    Raises:
        ValueError: ``share`` is not in (0, 1].
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    return max(least, spent * (1 - share) / share)


class Enforcer:
    """Watches the three kinds and re-renders on every change (debounced)."""

    def __init__(
        self,
        kubeconfig: str,
        ready_file: Path | None,
        stand_ins: Iterable[Obj] = (),
        pod_subnet: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.ready_file = ready_file
        self.stand_ins = list(stand_ins)
        self.pod_subnet = pod_subnet
        self.state: dict[str, dict[str, Obj]] = {"pods": {}, "namespaces": {}, "policies": {}}
        self.synced: set[str] = set()
        self.changed = asyncio.Event()
        self.last: tuple[list[str], list[str]] | None = None
        self.repair = False

    async def _heal(self) -> None:
        """Every :data:`HEAL_INTERVAL` seconds: if the filter table lost part of what was
        applied (someone flushed a chain, deleted a jump, moved a guard), apply again."""
        spent = 0.0
        while True:
            await asyncio.sleep(pace(HEAL_INTERVAL, spent, HEAL_SHARE))
            if self.last is None:
                continue
            started = time.monotonic()
            saved = await asyncio.to_thread(filter_table)
            problems = drifted(*self.last, saved)
            spent = time.monotonic() - started
            if problems:
                print(
                    f"netpol: rules changed by someone else ({'; '.join(problems[:5])}); "
                    "applying again",
                    file=sys.stderr,
                    flush=True,
                )
                self.repair = True
                self.changed.set()

    async def _watch(self, kind: str, api: Any, lister: str) -> None:
        from kubernetes_asyncio import watch

        while True:
            try:
                listed = await getattr(api, lister)(_preload_content=False)
                data = await listed.json()
                items = {self._key(i): i for i in data.get("items") or []}
                self.state[kind] = items
                self.synced.add(kind)
                self.changed.set()
                version = data["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    getattr(api, lister),
                    resource_version=version,
                    timeout_seconds=300,
                    _preload_content=False,
                )
                async for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        break
                    if event["type"] == "DELETED":
                        self.state[kind].pop(self._key(obj), None)
                    else:
                        self.state[kind][self._key(obj)] = obj
                    self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                print(f"netpol: {kind} watch: {type(exc).__name__}: {exc}", file=sys.stderr)
                await asyncio.sleep(1)

    @staticmethod
    def _key(obj: Obj) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name')}"

    async def run(self) -> None:
        from kubernetes_asyncio import client, config

        api_client = await config.new_client_from_config(config_file=self.kubeconfig)
        core = client.CoreV1Api(api_client)
        net = client.NetworkingV1Api(api_client)
        tasks = [
            asyncio.create_task(self._heal()),
            asyncio.create_task(self._watch("pods", core, "list_pod_for_all_namespaces")),
            asyncio.create_task(self._watch("namespaces", core, "list_namespace")),
            asyncio.create_task(
                self._watch("policies", net, "list_network_policy_for_all_namespaces")
            ),
        ]
        spent = 0.0
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(pace(COALESCE, spent, APPLY_SHARE))  # gather a burst
                self.changed.clear()
                started = time.monotonic()
                if len(self.synced) < 3:
                    continue
                namespaces = {
                    (ns.get("metadata") or {})["name"]: ns
                    for ns in self.state["namespaces"].values()
                }
                rendered = render(
                    [*self.state["pods"].values(), *self.stand_ins],
                    namespaces,
                    self.state["policies"].values(),
                    pod_subnet=self.pod_subnet,
                )
                if rendered != self.last or self.repair:
                    self.repair = False
                    try:
                        apply(*rendered)
                        self.last = rendered
                        chains, rules = rendered
                        print(
                            f"netpol: rendered and applied {len(chains)} chains, "
                            f"{len(rules)} rules "
                            f"({len(self.state['policies'])} policies, "
                            f"{len(self.state['pods'])} pods) in "
                            f"{(time.monotonic() - started) * 1000:.0f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                    except RuntimeError as exc:
                        print(f"netpol: {exc}", file=sys.stderr)
                        self.changed.set()
                        await asyncio.sleep(1)
                        continue
                spent = time.monotonic() - started
                if self.ready_file is not None and not self.ready_file.exists():
                    self.ready_file.write_text("ready\n")
        finally:
            for task in tasks:
                task.cancel()
            await api_client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.host.netpol")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument(
        "--pod-subnet",
        metavar="CIDR",
        help="drop new connections from or to addresses in CIDR that are not known pods",
    )
    parser.add_argument(
        "--node-dns",
        metavar="IP",
        help="the node's CoreDNS listens on IP: policies see it as a kube-dns pod there",
    )
    args = parser.parse_args(argv)
    stand_ins = [node_dns_stand_in(args.node_dns)] if args.node_dns else []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await Enforcer(args.kubeconfig, args.ready_file, stand_ins, args.pod_subnet).run()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(serve())
    # the rules stay (fail closed): the node's teardown removes them (remove_rules)
    return 0
