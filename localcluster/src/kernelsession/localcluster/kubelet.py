"""A local kubelet: runs the pods of a real API server as local processes.

Run it as its own process::

    python -m kernelsession.localcluster.kubelet --kubeconfig PATH --node-name NAME --root DIR

It registers a Ready Node (renewing its Lease in ``kube-node-lease`` and its status
heartbeat), watches pods in all namespaces, binds unscheduled pods to itself through the
``pods/binding`` subresource (there is no scheduler: a pod whose nodeSelector, required
node affinity or tolerations do not fit stays Pending with ``PodScheduled=False``,
reason ``Unschedulable``), and runs each pod bound to it with a
:class:`~kernelsession.localcluster.podrunner.PodWorker`.

What differs from a real kubelet (by design):

- **The container image is ignored.** Each container's ``command`` + ``args`` are executed
  directly on this machine, so ``command`` is required. PATH inside a pod is the
  kernelsession venv's ``bin`` directory (``dirname(sys.executable)``) followed by the
  system directories, so ``python``, ``jupyter``, ``jupyter-lab``... resolve to the venv.
- **No isolation.** Every pod gets its own loopback address 127.x.y.z (``status.podIP``;
  Linux routes all of 127/8 to ``lo``), but shares the host's filesystem, users and PID
  namespace. HOME and the working directory are ``<root>/pods/<ns>_<name>_<uid>/home``;
  each container's output goes to ``<root>/pods/<ns>_<name>_<uid>/<container>/<n>.log``
  (``n`` = restart count). ``kubectl logs``/``exec`` do not work (no kubelet API).
- **securityContext is recorded, not enforced**: processes run as the kubelet's user. The
  kelnelsession venv usually lives under /root, unreadable by other uids, so switching
  to ``runAsUser`` would break the interpreter.
- Volumes (including the service-account token projection), init containers, resource
  limits and service environment variables are not implemented.
- Crash-loop back-off starts at ``--backoff-base`` (1 s) and doubles up to
  ``--backoff-max`` (60 s), like Kubernetes' ReduceDefaultCrashLoopBackOffDecay.

On SIGTERM/SIGINT the kubelet stops all its pods' processes (by PID) and exits; the pods
stay in the API. A restarted kubelet adopts nothing stale: pods bound to it whose
processes it does not own are started again with ``restartCount`` + 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import random
import signal
import sys
import tempfile
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from .ipam import IPAllocator
from .podrunner import PodWorker, now_iso
from .podspec import JSON, unschedulable_reason

log = logging.getLogger("kernelsession.localcluster.kubelet")

KUBELET_VERSION = "v1.35.4-kernelsession"


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kubelet:
    """Registers the node, binds and runs pods. Use :meth:`run` inside an event loop."""

    def __init__(
        self,
        api: ApiClient,
        *,
        node_name: str,
        root: Path,
        pod_network: str,
        ip_lock_dir: Path | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        ready_file: Path | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node_name = node_name
        self.root = root
        self.host_ip = "127.0.0.1"
        self.ipam = IPAllocator(pod_network, lock_dir=ip_lock_dir)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.ready_file = ready_file
        self.node_labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64" if platform.machine() == "x86_64" else platform.machine(),
            "kernelsession.dev/local-kubelet": "true",
        }
        self.workers: dict[str, PodWorker] = {}
        self._binding: set[str] = set()
        self._unschedulable: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ready_since = now_iso()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP session used for probes."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    def backoff(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (0-based): 0, base, 2*base, ... max."""
        if attempt == 0:
            return 0.0
        return float(min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max))

    # -- API helpers --------------------------------------------------------------
    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """One raw API request; returns the decoded JSON body. Raises ApiException on non-2xx."""
        resp = await self.api.call_api(
            path,
            method,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        try:
            data = await resp.read()
        finally:
            resp.release()
        if not 200 <= resp.status <= 299:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = data.decode(errors="replace")
            raise exc
        return json.loads(data) if data else None

    async def get_json(self, path: str) -> JSON | None:
        """GET an API path as JSON; None on 404. Raises ApiException otherwise."""
        try:
            result: JSON = await self._call("GET", path)
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_pod_status(self, namespace: str, name: str, status: JSON) -> None:
        """Strategic-merge-patch ``pods/status``. Raises ApiException."""
        await self._call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            "application/strategic-merge-patch+json",
        )

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete with gracePeriodSeconds=0 (precondition: uid). Ignores 404/409."""
        try:
            await self._call(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it finishes."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, uid: str) -> None:
        """Drop a finished worker."""
        self.workers.pop(uid, None)

    # -- node ---------------------------------------------------------------------
    def _node_status(self) -> JSON:
        cpus = str(os.cpu_count() or 1)
        mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        resources = {
            "cpu": cpus,
            "memory": f"{mem_kib}Ki",
            "pods": "1000",
            "ephemeral-storage": "100Gi",
        }
        now = now_iso()
        return {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "local kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self._ready_since,
                },
                *[
                    {
                        "type": t,
                        "status": "False",
                        "reason": f"KubeletHasSufficient{r}",
                        "message": f"kubelet has sufficient {r.lower()}",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": self._ready_since,
                    }
                    for t, r in (
                        ("MemoryPressure", "Memory"),
                        ("DiskPressure", "Disk"),
                        ("PIDPressure", "PID"),
                    )
                ],
            ],
            "nodeInfo": {
                "architecture": self.node_labels["kubernetes.io/arch"],
                "bootID": "",
                "containerRuntimeVersion": "localprocess://1",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": "",
                "kubeletVersion": KUBELET_VERSION,
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": platform.platform(),
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name)),
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }

    async def register_node(self) -> None:
        """Create (or update) the Node and mark it Ready. Raises ApiException."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.node_labels},
        }
        try:
            await self._call("POST", "/api/v1/nodes", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self._call(
                "PATCH",
                f"/api/v1/nodes/{self.node_name}",
                {"metadata": {"labels": self.node_labels}},
                "application/strategic-merge-patch+json",
            )
        await self._update_node_status()
        await self._renew_lease()

    async def _update_node_status(self) -> None:
        await self._call(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            {"status": self._node_status()},
            "application/strategic-merge-patch+json",
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": 40,
            "renewTime": _micro_now(),
        }
        try:
            await self._call("PATCH", path, {"spec": spec}, "application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self._call(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node_name},
                    "spec": spec,
                },
            )

    async def _heartbeat(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(10)  # the kubelet's lease renew interval
            ticks += 1
            try:
                await self._renew_lease()
                if ticks % 6 == 0:
                    await self._update_node_status()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- pods ---------------------------------------------------------------------
    async def _pod_loop(self) -> None:
        first = True
        while True:
            try:
                listing = await self._call("GET", "/api/v1/pods")
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self.handle("MODIFIED", pod)
                for uid in set(self.workers) - seen:
                    self._gone(uid)
                if first and self.ready_file is not None:
                    self.ready_file.write_text(str(os.getpid()))
                first = False
                w = watch.Watch()
                async with w.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=rv,
                    timeout_seconds=240,
                    allow_watch_bookmarks=True,
                ) as stream:
                    async for event in stream:
                        etype = event["type"]
                        if etype in ("ADDED", "MODIFIED", "DELETED"):
                            self.handle(etype, event["raw_object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod watch interrupted (%s: %s); relisting", type(exc).__name__, exc)
                await asyncio.sleep(0.5)  # back-off before relisting

    def _gone(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None and not worker.stopping:
            worker.deleted = True
            self.spawn(worker.terminate(2.0, delete=False))

    def handle(self, etype: str, pod: JSON) -> None:
        """React to one observed pod; never raises (a bad pod must not stop the kubelet)."""
        try:
            self._handle(etype, pod)
        except Exception:
            log.exception("handling pod %s failed", (pod.get("metadata") or {}).get("name"))

    def _handle(self, etype: str, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        spec = pod.get("spec") or {}
        if etype == "DELETED":
            self._gone(uid)
            self._unschedulable.pop(uid, None)
            return
        node = spec.get("nodeName")
        if not node:
            if meta.get("deletionTimestamp"):
                return
            if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
                return
            self._schedule(pod)
            return
        if node != self.node_name:
            return
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            if meta.get("deletionTimestamp"):
                self.spawn(self.delete_pod(meta["namespace"], meta["name"], uid))
            return
        if meta.get("deletionTimestamp"):
            self.spawn(self.delete_pod(meta["namespace"], meta["name"], uid))
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        worker.start()
        log.info("pod %s/%s: started", meta["namespace"], meta["name"])

    def _schedule(self, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self._binding:
            return
        reason = unschedulable_reason(pod, node_name=self.node_name, node_labels=self.node_labels)
        if reason is not None:
            conds = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
            current = conds.get("PodScheduled") or {}
            if current.get("reason") == "Unschedulable" and current.get("message") == reason:
                return
            if self._unschedulable.get(uid) == reason:
                return
            self._unschedulable[uid] = reason
            self.spawn(self._mark_unschedulable(meta["namespace"], meta["name"], reason))
            return
        self._binding.add(uid)
        self.spawn(self._bind(meta["namespace"], meta["name"], uid))

    async def _mark_unschedulable(self, namespace: str, name: str, message: str) -> None:
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now_iso(),
        }
        try:
            await self.patch_pod_status(namespace, name, {"phase": "Pending", "conditions": [cond]})
        except ApiException as exc:
            log.warning("pod %s/%s: cannot mark unschedulable: %s", namespace, name, exc.reason)

    async def _bind(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            await self._call("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body)
            log.info("pod %s/%s: bound to %s", namespace, name, self.node_name)
        except ApiException as exc:
            log.warning("pod %s/%s: binding failed: %s %s", namespace, name, exc.status, exc.reason)
        finally:
            self._binding.discard(uid)

    # -- main ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Register the node, serve pods until ``stop`` is set, then stop all pods' processes.

        Raises ApiException when the node cannot be registered.
        """
        (self.root / "pods").mkdir(parents=True, exist_ok=True)
        await self.register_node()
        tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._pod_loop())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every pod process (SIGTERM, up to 5 s, SIGKILL); pods stay in the API."""
        workers = list(self.workers.values())
        await asyncio.gather(
            *(w.terminate(min(w.grace_period(), 5.0), delete=False) for w in workers),
            return_exceptions=True,
        )
        for w in workers:
            if w.task is not None:
                w.task.cancel()
        if self._http is not None:
            await self._http.close()


def default_pod_network() -> str:
    """A random /16 inside 127/8 (not 127.0/16), so concurrent clusters rarely overlap."""
    return f"127.{random.randint(1, 254)}.0.0/16"  # noqa: S311


async def _amain(args: argparse.Namespace) -> int:
    api = await config.new_client_from_config(config_file=str(args.kubeconfig))
    lock_dir = Path(tempfile.gettempdir()) / "kernelsession-podips"
    kubelet = Kubelet(
        api,
        node_name=args.node_name,
        root=Path(args.root),
        pod_network=args.pod_network,
        ip_lock_dir=lock_dir,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        ready_file=Path(args.ready_file) if args.ready_file else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kubelet.run(stop)
    finally:
        with contextlib.suppress(Exception):
            await api.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.kubelet")
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument("--root", required=True, type=Path, help="state dir (pod dirs, logs)")
    parser.add_argument("--pod-network", default=None, help="loopback CIDR for pod IPs")
    parser.add_argument("--backoff-base", type=float, default=1.0)
    parser.add_argument("--backoff-max", type=float, default=60.0)
    parser.add_argument("--ready-file", default=None, help="written once the kubelet serves")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.pod_network is None:
        args.pod_network = default_pod_network()
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
