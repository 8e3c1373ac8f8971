"""A hollow run on a started LocalCluster: the hollow network, KWOK with its fake nodes
and stages, and the hollow lab serving every lab pod on them; all removed by :meth:`stop`.

The real node is cordoned for the run (so new pods land on the fake nodes without any
change to the operator's pod specs) and uncordoned at the end. The NetworkPolicy
enforcer is left as is: KWOK pods have IPs in the hollow range, and traffic to them from
the operator's pod is forwarded by the host like pod-to-pod traffic, so the enforcer's
per-pod chains apply to them as to real pods (the bench counts its rules).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch

from kernelsession.localcluster.building.kwok import ensure_kwok
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.hollow import kwokconfig
from kernelsession.localcluster.hollow.lab import HollowLab, entry_from_pod
from kernelsession.localcluster.hollow.netns import HollowNetwork
from kernelsession.localcluster.processes import start_logged, stop_process

LAB_PORT = 8888


class HollowRun:
    """KWOK + hollow network + hollow lab for ``namespace`` on ``cluster``."""

    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        *,
        nodes: int = 4,
        delay_ms: int = 3000,
        jitter_ms: int = 5000,
        network: HollowNetwork | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.network = network or HollowNetwork()
        self.node_names = [f"hollow-{i}" for i in range(nodes)]
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.lab = HollowLab()
        self.kwok: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ks-hollow-")
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._api: k8s.ApiClient | None = None

    def start_kwok(self) -> None:
        """Build (once) and start KWOK, create the fake nodes, cordon the real node."""
        binary = ensure_kwok().kwok
        tmp = Path(self._tmp.name)
        config = tmp / "kwok.yaml"
        config.write_text(
            yaml.safe_dump_all(
                [
                    kwokconfig.configuration(self.network.pod_range),
                    *kwokconfig.stages(self.delay_ms, self.jitter_ms),
                ]
            )
        )
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(Path(self.cluster.kubeconfig).read_text())
        self.kwok = start_logged(
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--config={config}",
                f"--manage-nodes-with-label-selector={kwokconfig.NODE_LABEL}=true",
                "--server-address=127.0.0.1:0",
            ],
            tmp / "kwok.log",
        )
        cidrs = kwokconfig.node_cidrs(self.network.pod_range, len(self.node_names))
        self.cluster.apply(
            [kwokconfig.node(n, c) for n, c in zip(self.node_names, cidrs, strict=True)]
        )
        self.cluster.kubectl("cordon", self.cluster.node_name)

    @property
    def kwok_log(self) -> Path:
        return Path(self._tmp.name) / "kwok.log"

    async def start_lab(self) -> str:
        """Create the hollow network and serve the labs; returns the control site's URL."""
        self.network.setup()
        self._runner = web.AppRunner(self.lab.app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.network.listening_socket(LAB_PORT)).start()
        control = web.AppRunner(self.lab.control_app(), access_log=None)
        await control.setup()
        site = web.TCPSite(control, "127.0.0.1", 0)
        await site.start()
        self._control = control
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._api = await k8s_config.new_client_from_config(
            config_file=str(self.cluster.kubeconfig)
        )
        self._watcher = asyncio.create_task(self._watch_pods())
        return f"http://127.0.0.1:{port}"

    async def _secret(self, core: k8s.CoreV1Api, name: str) -> dict[str, str]:
        secret = await core.read_namespaced_secret(name, self.namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def _watch_pods(self) -> None:
        assert self._api is not None
        core = k8s.CoreV1Api(self._api)
        hollow = set(self.node_names)
        while True:
            w = watch.Watch()
            async for event in w.stream(
                core.list_namespaced_pod, self.namespace, timeout_seconds=3600
            ):
                pod = event["object"]
                ip = pod.status.pod_ip if pod.status else None
                if not ip or pod.spec.node_name not in hollow:
                    continue
                if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                    self.lab.remove(ip)
                    continue
                if ip in self.lab.labs:
                    continue
                raw = self._api.sanitize_for_serialization(pod)
                refs = [
                    e["valueFrom"]["secretKeyRef"]["name"]
                    for c in raw["spec"]["containers"]
                    for e in c.get("env") or []
                    if e.get("name") == "JUPYTER_TOKEN"
                    and "secretKeyRef" in (e.get("valueFrom") or {})
                ]
                if not refs:
                    continue
                with contextlib.suppress(k8s.ApiException):
                    entry = entry_from_pod(raw, await self._secret(core, refs[0]))
                    if entry is not None:
                        self.lab.add(ip, entry)

    def enforcer_rules(self) -> int:
        """How many iptables filter rules the NetworkPolicy enforcer holds now."""
        out = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=False).stdout
        return sum(1 for line in out.splitlines() if "KS-NP" in line and line.startswith("-A"))

    async def stop(self) -> None:
        """Stop everything this run started; uncordon the real node."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._api is not None:
            await self._api.close()
        for runner in (self._runner, getattr(self, "_control", None)):
            if runner is not None:
                await runner.cleanup()
        self.network.teardown()
        self.stop_kwok()

    def stop_kwok(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.kubectl("uncordon", self.cluster.node_name)
        with contextlib.suppress(Exception):
            self.cluster.kubectl("delete", "node", *self.node_names, "--wait=false")
        if self.kwok is not None:
            stop_process(self.kwok)
        keep = os.environ.get("KERNELSESSION_KWOK_LOG")
        if keep and self.kwok_log.exists():
            shutil.copyfile(self.kwok_log, keep)
        self._tmp.cleanup()


def describe(run: HollowRun) -> dict[str, Any]:
    """What the run is, for the bench's header."""
    return {
        "nodes": len(run.node_names),
        "pod_range": run.network.pod_range,
        "start_delay_ms": [run.delay_ms, run.jitter_ms],
        "labs": len(run.lab.labs),
    }


__all__ = ["HollowRun", "describe"]
