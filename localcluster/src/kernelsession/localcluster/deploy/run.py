"""``make run``: the whole system on this machine, until Ctrl-C.

Starts the local cluster (control plane + a real node), installs the operator as users do
(``kubectl apply -k manifests/``, from the image ``make images`` built), creates the sample
session,
waits until it is Ready (printing its progress), runs a short piece of Python in it
through the client, then keeps everything up and prints the commands to try. With
``--ingress`` it also installs the local cluster's ingress controller (Traefik; built once
when missing) and prints its address. On Ctrl-C
(SIGINT) or SIGTERM it stops every process it started, by PID, and removes its files.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from kernelsession.localcluster.building.gobuild import BinariesUnavailableError
from kernelsession.localcluster.building.images import ImagesUnavailableError
from kernelsession.localcluster.cluster import LocalCluster, default_images
from kernelsession.localcluster.cluster.controlplane import ControlPlaneError
from kernelsession.localcluster.deploy import OperatorDeployment, deploy_operator
from kernelsession.localcluster.deploy.ingress import (
    IngressController,
    IngressError,
    install_ingress,
)
from kernelsession.localcluster.deploy.operator_process import OPERATOR_NAMESPACE, manifests_dir

if TYPE_CHECKING:
    from kernelsession.client import KernelSessionStatus

#: Imported while the cluster starts (kubernetes_asyncio and aiohttp take ~1 s of CPU; the
#: cluster's start is mostly waiting on its processes), needed only for the sample.
CLIENT_MODULE = "kernelsession.client"

SAMPLE_CODE = (
    "import platform, sys\n"
    "print(f'Hello from {platform.node()} on Python {sys.version.split()[0]}')\n"
    "print(sum(range(10**6)))"
)


def say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


async def _sample(cluster: LocalCluster, name: str, namespace: str, timeout: float) -> str:
    from kernelsession.client import KernelSessionClient

    seen: list[str] = []

    def progress(status: KernelSessionStatus) -> None:
        line = status.describe()
        if not seen or seen[-1] != line:
            seen.append(line)
            say(f"  {line}")

    async with KernelSessionClient(namespace=namespace, kubeconfig=str(cluster.kubeconfig)) as ks:
        await ks.wait_ready(name, timeout=timeout, on_progress=progress)
        manager = await ks.lab_session(name)
        async with manager as lab:
            return await lab.run_python(SAMPLE_CODE, timeout=60)


def _operator_env(ingress: IngressController | None) -> dict[str, str]:
    """The operator's settings: with the ingress controller, an Ingress per session,
    reachable from this machine at the controller's Service address (any host)."""
    if ingress is None:
        return {}
    address = ingress.service_ip if ingress.port == 80 else f"{ingress.service_ip}:{ingress.port}"
    labels = ",".join(f"{k}={v}" for k, v in sorted(ingress.pod_labels.items()))
    return {
        "KERNELSESSION_INGRESS": "true",
        "KERNELSESSION_INGRESS_CLASS": ingress.class_name,
        "KERNELSESSION_INGRESS_CONTROLLER_NAMESPACE": ingress.namespace,
        "KERNELSESSION_INGRESS_CONTROLLER_LABELS": labels,
        "KERNELSESSION_INGRESS_URL": f"http://{address}",
    }


def _ingress_commands(ingress: IngressController | None) -> str:
    if ingress is None:
        return ""
    lab = ingress.url("/labs/labs/alice/lab")
    token = "kubectl get secret alice-token -n labs -o jsonpath='{.data.token}' | base64 -d"
    lines = [
        ("kubectl get ingress -n labs", "each session's route"),
        ("kubectl get ks -n labs -o wide", "EXTERNAL URL column"),
        (token, "the token the lab's login page asks for"),
        (f"kubectl logs -n {ingress.namespace} deploy/traefik", "its access log"),
    ]
    head = (
        f"\n  # through the ingress controller (Traefik, IngressClass {ingress.class_name}, "
        f"{ingress.address}): open {lab} in a browser on this machine"
    )
    return head + "".join(f"\n  {c:<55} # {w}" for c, w in lines)


def _commands(cluster: LocalCluster, ingress: IngressController | None = None) -> str:
    kubectl = cluster.binaries.kubectl
    path_line = f"export PATH={kubectl.parent}:$PATH\n" if kubectl else ""
    venv_bin = Path(sys.executable).parent
    ingress_lines = _ingress_commands(ingress)
    return f"""
Try, in another terminal:
  {path_line}  export KUBECONFIG={cluster.kubeconfig}
  export PATH={venv_bin}:$PATH
  kubectl get ks -n labs                                  # sessions, phase, readiness
  kubectl get ks -n labs -w                               # watch status change
  kubectl apply -f manifests/samples/full.yaml            # another session
  kubectl wait --for=condition=Ready ks/bob-analysis -n labs --timeout=120s
  kernelsession exec alice -c 'print(6 * 7)'              # run code (stdout only)
  kernelsession probe alice                               # health check with latency
  kernelsession open alice                                # JupyterLab in your browser
  kubectl logs -n labs -l kernelsession.dev/session=alice # the lab's log
  kubectl logs -n {OPERATOR_NAMESPACE} deploy/kernelsession-operator   # the operator's
  kubectl describe ks alice -n labs                       # events: Created, Ready...
  kubectl delete ks alice -n labs                         # children go with it{ingress_lines}
Ctrl-C stops everything."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="stop after the sample ran instead of waiting for Ctrl-C",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds the sample session may take to become Ready",
    )
    parser.add_argument(
        "--ingress",
        action="store_true",
        help="also install the ingress controller (Traefik; built once when missing)",
    )
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The client's own log lines would drown the progress; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    started = time.monotonic()
    threading.Thread(
        target=importlib.import_module, args=(CLIENT_MODULE,), name="import-client", daemon=True
    ).start()
    cluster = LocalCluster()
    operator: OperatorDeployment | None = None
    ingress: IngressController | None = None
    code = 0
    try:
        if args.ingress:
            # the Traefik image joins the node's images (built, once, before the cluster starts)
            cluster = LocalCluster(images=default_images(ingress=True))
        say(
            "starting the local cluster (etcd, kube-apiserver, kube-controller-manager, "
            "kube-scheduler; containerd, kubelet, kube-proxy, CoreDNS, NetworkPolicy)"
        )
        timings = cluster.start()
        say(timings.summary())
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        say("kubectl apply -k manifests/crds, then -k manifests/ (namespaces, RBAC, the operator)")
        t = time.monotonic()
        if args.ingress:
            ingress = install_ingress(cluster)
            say(
                f"ingress controller {ingress.namespace}/traefik (IngressClass "
                f"{ingress.class_name}) ready in {ingress.ready_seconds:.1f}s at "
                f"{ingress.address}"
            )
        operator = deploy_operator(cluster, env=_operator_env(ingress), wait=False)
        # The sample session goes in while the operator's pods start: the operator takes
        # it up as soon as it runs (as it does with any session created before it).
        sample = manifests_dir() / "samples" / "minimal.yaml"
        cluster.apply(sample)
        say(f"applied {sample.relative_to(sample.parents[2])}; waiting for the operator")
        operator.wait_available()
        pods = ", ".join(p["metadata"]["name"] for p in operator.ready_pods())
        say(
            f"operator available in {time.monotonic() - t:.1f}s ({OPERATOR_NAMESPACE}: "
            f"{pods}; image {cluster.image_refs['operator']}); waiting for labs/alice"
        )
        output = asyncio.run(_sample(cluster, "alice", "labs", args.timeout))
        say(f"ran Python in labs/alice through the client; its stdout:\n{output}")
        print(cluster.kubectl("get", "ks", "-n", "labs").stdout, end="", flush=True)
        say(f"up in {time.monotonic() - started:.1f}s")
        print(_commands(cluster, ingress), flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        if not args.no_wait:
            threading.Event().wait()
    except KeyboardInterrupt:
        say("Ctrl-C: stopping")
    except (
        BinariesUnavailableError,
        ImagesUnavailableError,
        ControlPlaneError,
        IngressError,
    ) as exc:
        say(f"error: {exc}")
        code = 1
    except Exception as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        if operator is not None:
            say(f"operator log:\n{operator.logs()[-3000:]}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish stopping even on a 2nd Ctrl-C
        problems = cluster.stop()
        if problems:
            say(f"could not restore on the host: {', '.join(problems)}")
        say("stopped every process it started")
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
