"""Running one pod as local processes and reporting its status like a kubelet.

A :class:`PodWorker` owns a pod bound to the local node: it allocates the pod's loopback
IP, runs every container as a process (command + args after ``$(VAR)`` expansion, in its
own session/process group, cwd and HOME = the pod's directory), executes startup,
readiness and liveness probes, restarts containers per ``restartPolicy`` with
exponential back-off (CrashLoopBackOff), and patches ``pods/status``.

On deletion it SIGTERMs each container's process group, waits the grace period, SIGKILLs,
then deletes the pod with ``gracePeriodSeconds=0`` as a kubelet finalises deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from .podspec import (
    JSON,
    EnvConfigError,
    ProbeError,
    ProbeSpec,
    command_line,
    configmap_data,
    parse_probe,
    referenced_objects,
    resolve_env,
    secret_data,
)
from .probes import run_probe

if TYPE_CHECKING:
    from .kubelet import Kubelet

log = logging.getLogger("kernelsession.localcluster.kubelet")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now_iso() -> str:
    """The current UTC time in Kubernetes' RFC 3339 (seconds) format."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_path() -> str:
    """PATH inside pods: the kernelsession venv's bin directory, then the system dirs."""
    return f"{os.path.dirname(sys.executable)}:{SYSTEM_PATH}"


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ContainerRunner:
    """One container of a pod: its process, restarts, probes and status."""

    def __init__(self, worker: PodWorker, spec: JSON, prior: JSON | None) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.restart_count = 0
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = {}
        self.ready = False
        self.started = False
        self.env: dict[str, str] = {}
        self.done = False
        self.killed_by_probe: str | None = None
        if prior:  # a pod bound to us that this process did not start: a restart
            ran = "running" in (prior.get("state") or {}) or "terminated" in (
                prior.get("state") or {}
            )
            self.restart_count = int(prior.get("restartCount") or 0) + (1 if ran else 0)
            if "terminated" in (prior.get("state") or {}):
                self.last_state = {"terminated": prior["state"]["terminated"]}
            elif prior.get("lastState"):
                self.last_state = prior["lastState"]

    # -- status -------------------------------------------------------------------
    def status(self) -> JSON:
        """This container's ``containerStatuses`` entry."""
        out: JSON = {
            "name": self.name,
            "image": self.spec.get("image") or "",
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            out["containerID"] = f"localprocess://{self.proc.pid}"
        return out

    def _set(self, state: JSON, *, ready: bool | None = None) -> None:
        self.state = state
        if ready is not None:
            self.ready = ready
        self.worker.changed()

    # -- lifecycle ----------------------------------------------------------------
    def _policy_restarts(self, exit_code: int) -> bool:
        policy = (self.worker.pod.get("spec") or {}).get("restartPolicy") or "Always"
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    async def run(self) -> None:
        """Run the container until it terminates for good or the pod stops."""
        k = self.worker.kubelet
        attempt = 0  # consecutive failures, for back-off
        while not self.worker.stopping:
            try:
                self.env = await self.worker.resolve_env(self.spec)
                argv = command_line(self.spec, self.env)
            except EnvConfigError as exc:
                self._set(
                    {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                )
                if await self.worker.wait_stopping(min(k.backoff_base * 2, 5.0)):
                    return
                continue
            except ApiException as exc:
                self._set(
                    {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": f"API error {exc.status}: {exc.reason}",
                        }
                    }
                )
                if await self.worker.wait_stopping(2.0):
                    return
                continue
            full_env = self.worker.base_env() | self.env
            log_dir = self.worker.dir / self.name
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{self.restart_count}.log"
            started_at = now_iso()
            try:
                logf = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    self.proc = await asyncio.create_subprocess_exec(
                        *argv,
                        env=full_env,
                        cwd=self.worker.home,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=logf,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,
                    )
                finally:
                    os.close(logf)
            except OSError as exc:
                message = _start_error_message(argv[0], exc)
                log_path.write_text(message + "\n")
                term = {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": message,
                    "startedAt": started_at,
                    "finishedAt": now_iso(),
                }
                if not self._policy_restarts(128):
                    self.done = True
                    self._set({"terminated": term}, ready=False)
                    return
                self.last_state = {"terminated": term}
                delay = k.backoff(attempt)
                attempt += 1
                self.restart_count += 1
                self._set(
                    {"waiting": {"reason": "RunContainerError", "message": message}}, ready=False
                )
                if await self.worker.wait_stopping(delay):
                    return
                continue
            self.killed_by_probe = None
            run_started = time.monotonic()
            probes = self._start_probes(started_at)
            try:
                rc = await self.proc.wait()
            finally:
                for task in probes:
                    task.cancel()
                # processes the container left behind in its group go with it
                _kill_group(self.proc.pid, signal.SIGKILL)
            code = _exit_code(rc)
            term = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": now_iso(),
                "containerID": f"localprocess://{self.proc.pid}",
            }
            if self.killed_by_probe:
                term["message"] = self.killed_by_probe
            self.proc = None
            self.started = False
            if self.worker.stopping or not self._policy_restarts(code):
                self.done = True
                self._set({"terminated": term}, ready=False)
                return
            if time.monotonic() - run_started > 600:
                attempt = 0
            self.last_state = {"terminated": term}
            delay = k.backoff(attempt)
            attempt += 1
            self.restart_count += 1
            if delay > 0:
                pod = self.worker.pod["metadata"]
                self._set(
                    {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": (
                                f"back-off {delay:g}s restarting failed container={self.name} "
                                f"pod={pod['name']}_{pod['namespace']}({pod['uid']})"
                            ),
                        }
                    },
                    ready=False,
                )
            if await self.worker.wait_stopping(delay):
                return

    def _start_probes(self, started_at: str) -> list[asyncio.Task[None]]:
        ip = self.worker.ip or ""
        specs: dict[str, ProbeSpec] = {}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if self.spec.get(kind):
                try:
                    specs[kind] = parse_probe(self.spec[kind], self.spec, ip)
                except (ProbeError, KeyError, ValueError) as exc:
                    log.warning("pod %s: bad %s: %s", self.worker.key, kind, exc)
        self.started = "startupProbe" not in specs
        self._set(
            {"running": {"startedAt": started_at}},
            ready=self.started and "readinessProbe" not in specs,
        )
        startup_done = asyncio.Event()
        if self.started:
            startup_done.set()
        tasks = [
            asyncio.create_task(self._probe_loop(kind, spec, startup_done))
            for kind, spec in specs.items()
        ]
        return tasks

    async def _probe_loop(self, kind: str, spec: ProbeSpec, startup_done: asyncio.Event) -> None:
        proc = self.proc
        if kind != "startupProbe":
            await startup_done.wait()
        await asyncio.sleep(spec.initial_delay)  # a timer: Kubernetes' initialDelaySeconds
        successes = failures = 0
        session = self.worker.kubelet.http
        while proc is not None and proc.returncode is None:
            ok, detail = await run_probe(
                spec, session, env=self.worker.base_env() | self.env, cwd=self.worker.home
            )
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readinessProbe":
                if ok and successes >= spec.success_threshold and not self.ready:
                    self.ready = True
                    self.worker.changed()
                elif not ok and failures >= spec.failure_threshold and self.ready:
                    self.ready = False
                    self.worker.changed()
            elif kind == "startupProbe" and ok:
                self.started = True
                self.worker.changed()
                if "readinessProbe" not in self.spec:
                    self.ready = True
                startup_done.set()
                return
            if kind in ("livenessProbe", "startupProbe") and failures >= spec.failure_threshold:
                name = "Liveness" if kind == "livenessProbe" else "Startup"
                self.killed_by_probe = f"{name} probe failed: {detail}"
                log.info("pod %s container %s: %s, restarting", self.worker.key, self.name, detail)
                grace = spec.termination_grace
                if grace is None:
                    grace = self.worker.grace_period()
                await self.worker.kill_process(proc, grace)
                return
            await asyncio.sleep(spec.period)  # a timer: Kubernetes' periodSeconds


def _start_error_message(exe: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return (
            f'failed to create containerd task: exec: "{exe}": executable file not found '
            "in $PATH: unknown"
        )
    if isinstance(exc, PermissionError):
        return f'failed to create containerd task: exec: "{exe}": permission denied: unknown'
    return f'failed to create containerd task: exec: "{exe}": {exc.strerror or exc}: unknown'


class PodWorker:
    """Runs one pod bound to this node and keeps its status current."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key = f"{self.namespace}/{self.name}"
        self.dir = kubelet.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.home = self.dir / "home"
        self.ip: str | None = None
        self.stopping = False
        self.deleted = False
        self._stop_event = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_sent: JSON | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        prior_status = pod.get("status") or {}
        self.start_time: str = prior_status.get("startTime") or now_iso()
        prior = {c["name"]: c for c in prior_status.get("containerStatuses") or []}
        self.containers = [
            ContainerRunner(self, c, prior.get(c["name"])) for c in pod["spec"]["containers"]
        ]
        self.task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._terminate_task: asyncio.Task[None] | None = None

    # -- API-facing ---------------------------------------------------------------
    def start(self) -> None:
        """Start running the pod in the background."""
        self.task = asyncio.create_task(self._run(), name=f"pod {self.key}")
        self._status_task = asyncio.create_task(self._status_loop(), name=f"status {self.key}")

    def update(self, pod: JSON) -> None:
        """A newer version of the pod was observed."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and self._terminate_task is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.grace_period()
            self._terminate_task = asyncio.create_task(
                self.terminate(float(grace), delete=True), name=f"terminate {self.key}"
            )

    def grace_period(self) -> float:
        """The pod's terminationGracePeriodSeconds (default 30)."""
        value = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return float(30 if value is None else value)

    def changed(self) -> None:
        """Something in the status changed: schedule a status patch."""
        self._dirty.set()

    async def wait_stopping(self, seconds: float) -> bool:
        """Wait ``seconds`` (a back-off timer) or until the pod stops; True if stopping."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        return self.stopping

    def base_env(self) -> dict[str, str]:
        """The container-like base environment (PATH, HOME, HOSTNAME)."""
        spec = self.pod.get("spec") or {}
        return {
            "PATH": container_path(),
            "HOME": str(self.home),
            "HOSTNAME": spec.get("hostname") or self.name,
        }

    async def resolve_env(self, container: JSON) -> dict[str, str]:
        """Fetch the Secrets/ConfigMaps the container refers to and resolve its env.

        Raises EnvConfigError for missing non-optional references, ApiException for
        other API failures.
        """
        refs = referenced_objects(container)
        secrets: dict[str, dict[str, str] | None] = {}
        configmaps: dict[str, dict[str, str] | None] = {}
        for name in refs.secrets:
            obj = await self.kubelet.get_json(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
            secrets[name] = secret_data(obj) if obj is not None else None
        for name in refs.configmaps:
            obj = await self.kubelet.get_json(
                f"/api/v1/namespaces/{self.namespace}/configmaps/{name}"
            )
            configmaps[name] = configmap_data(obj) if obj is not None else None
        pod = dict(self.pod)
        pod["status"] = dict(pod.get("status") or {}) | self._addresses()
        return resolve_env(container, pod, secrets=secrets, configmaps=configmaps)

    # -- running ------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            old_ip = (self.pod.get("status") or {}).get("podIP")
            if not (old_ip and self.kubelet.ipam.reserve(old_ip)):
                self.ip = self.kubelet.ipam.allocate()
            else:
                self.ip = old_ip
            self.home.mkdir(parents=True, exist_ok=True)
            self.changed()
            await asyncio.gather(*(c.run() for c in self.containers))
        except Exception:
            log.exception("pod %s: worker failed", self.key)
        finally:
            if self.stopping or all(c.done for c in self.containers):
                self._release_ip()
            self.changed()

    def _release_ip(self) -> None:
        if self.ip is not None:
            self.kubelet.ipam.release(self.ip)

    async def kill_process(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it."""
        if proc.returncode is not None:
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0.0))
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def terminate(self, grace: float, *, delete: bool) -> None:
        """Stop all containers (SIGTERM, ``grace``, SIGKILL); then, if ``delete``, delete the
        pod with gracePeriodSeconds=0 and remove its directory. Never raises."""
        self.stopping = True
        self._stop_event.set()
        if not delete and self._status_task is not None:
            # the kubelet is shutting down (or the pod is gone): report nothing, so that a
            # new kubelet restarts the pod instead of finding it terminated
            self._status_task.cancel()
        try:
            procs = [c.proc for c in self.containers if c.proc is not None]
            await asyncio.gather(*(self.kill_process(p, grace) for p in procs))
            if self.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            self._release_ip()
            if delete and not self.deleted:
                await self._flush_status()
                await self.kubelet.delete_pod(self.namespace, self.name, self.uid)
                self.deleted = True
        except Exception:
            log.exception("pod %s: terminating failed", self.key)
        finally:
            if self._status_task is not None:
                self._status_task.cancel()
            if delete:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.kubelet.forget(self.uid)

    # -- status -------------------------------------------------------------------
    def _addresses(self) -> JSON:
        host = self.kubelet.host_ip
        out: JSON = {"hostIP": host, "hostIPs": [{"ip": host}]}
        if self.ip:
            out["podIP"] = self.ip
            out["podIPs"] = [{"ip": self.ip}]
        return out

    def _phase(self) -> str:
        cs = self.containers
        if all(c.done for c in cs):
            failed = any(c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in cs)
            return "Failed" if failed else "Succeeded"
        if any(c.proc is not None or c.last_state or c.done for c in cs):
            return "Running"
        return "Pending"

    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> JSON:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = (status, now_iso())
        cond: JSON = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[ctype][1],
        }
        # explicit nulls: a strategic merge patch keeps keys it is not told to remove
        cond["reason"] = reason or None
        cond["message"] = message or None
        return cond

    def build_status(self) -> JSON:
        """The pod status a kubelet would report now."""
        phase = self._phase()
        unready = [c.name for c in self.containers if not c.ready]
        terminal = phase in ("Succeeded", "Failed")
        containers_ready = not unready and not terminal
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        message = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
        gates = [
            g["conditionType"] for g in (self.pod.get("spec") or {}).get("readinessGates") or []
        ]
        existing = {
            c["type"]: c.get("status")
            for c in (self.pod.get("status") or {}).get("conditions") or []
        }
        gates_ok = all(existing.get(g) == "True" for g in gates)
        conditions = [
            self._condition("PodReadyToStartContainers", self.ip is not None and not terminal),
            self._condition("Initialized", True),
            self._condition(
                "ContainersReady",
                containers_ready,
                "" if containers_ready else reason,
                "" if containers_ready else message,
            ),
            self._condition(
                "Ready",
                containers_ready and gates_ok,
                ""
                if containers_ready and gates_ok
                else (reason if not containers_ready else "ReadinessGatesNotReady"),
                "" if containers_ready and gates_ok else message,
            ),
            self._condition("PodScheduled", True),
        ]
        status: JSON = {
            "phase": phase,
            "conditions": conditions,
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
            "qosClass": (self.pod.get("status") or {}).get("qosClass") or "BestEffort",
        }
        status |= self._addresses()
        return status

    async def _flush_status(self) -> None:
        body = self.build_status()
        if body == self._last_sent:
            return
        try:
            await self.kubelet.patch_pod_status(self.namespace, self.name, body)
            self._last_sent = body
        except ApiException as exc:
            if exc.status == 404:
                self.deleted = True
                return
            raise

    async def _status_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush_status()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod %s: status patch failed: %s", self.key, exc)
                await asyncio.sleep(1)  # retry back-off on API errors
                self._dirty.set()
            if self.deleted:
                return


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    """Decode a raw kubernetes_asyncio response body."""
    return json.loads(await resp.read())
