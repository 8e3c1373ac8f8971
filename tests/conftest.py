"""Shared fixtures: the local Kubernetes cluster (real control plane + a real node).

- ``host_baseline``: the host's state (:mod:`kernelsession.localcluster.host.state`) before
  the first cluster of the run started; teardown tests compare against it.
- ``cluster``: session-scoped :class:`~kernelsession.localcluster.cluster.LocalCluster`,
  started on first request (never when no selected test needs it), stopped at the end
  (or earlier by a test marked ``exclusive_node``: those run last, see
  ``pytest_collection_modifyitems``).
- ``kube_api``: an admin ``kubernetes_asyncio`` ``ApiClient`` for the cluster.
- ``namespace``: a fresh namespace per test (with its ``default`` ServiceAccount ready),
  deleted afterwards without waiting.
- ``sa_kubeconfig``: factory ``(rbac, namespace, name) -> Path`` applying RBAC manifests
  and returning a kubeconfig for that ServiceAccount (see ``helpers.sa_kubeconfig``).
- ``installed``: the cluster with namespaces, CRD, RBAC and admission policies from
  ``manifests/``; the labs namespace's session rules allow what the tests use
  (``helpers.TEST_POLICY``).
- ``ingress_controller``: Traefik, the local cluster's ingress controller (IngressClass
  ``traefik``, the default class; namespace ``kernelsession-ingress``), installed once per
  run; ``.url(path)`` is reachable from this machine (see
  :mod:`kernelsession.localcluster.deploy.ingress`).
- ``operator``: ONE operator for the whole run: the Deployment from ``manifests/``
  (``kubectl apply -k`` with the locally built image), as the operator's service account,
  with short intervals so culling and status changes happen within seconds. A test that
  stops or kills it starts it again in a ``finally``.
- ``ks``: an admin ``KernelSessionClient`` for namespace ``labs``; ``session_name``: a
  unique session name, deleted (with its children) after the test.

Tests using them carry ``pytest.mark.slow`` and ``pytest.mark.cluster``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.api_client import ApiClient

sys.path.insert(0, str(Path(__file__).parent))

from helpers import LABS, OPERATOR_ENV, TEST_POLICY, set_labs_policy, wait_for
from helpers import sa_kubeconfig as _sa_kubeconfig

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.building.gobuild import BinariesUnavailableError
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.ingress import IngressController, install_ingress
from kernelsession.localcluster.deploy.operator_process import install_manifests
from kernelsession.localcluster.host import state as hoststate

#: Under CI (``CI=true``, as CI services set it) a skipped test fails the run: a test
#: that cannot run there proves nothing, and a skip is easy to miss in a green run.
SKIP_FAILS = os.environ.get("CI", "").lower() == "true"
#: A failed test that used the shared operator shows this many lines of its log.
OPERATOR_LOG_LINES = 400
_OPERATOR = pytest.StashKey[InClusterOperator]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if SKIP_FAILS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which fails the run: {reason}"
    if report.failed and "operator" in getattr(item, "fixturenames", ()):
        op = item.config.stash.get(_OPERATOR, None)
        if op is not None:  # what the operator said, to tell a test's fault from its own
            report.sections.append((f"operator logs ({report.when})", _operator_state(op)))


def _operator_state(op: InClusterOperator) -> str:
    """Each replica's last log lines and the active one's own metrics."""
    try:
        metrics = op.metrics()
    except Exception as exc:  # the report must not fail the run
        metrics = f"(no metrics: {exc})"
    own = "\n".join(m for m in metrics.splitlines() if m.startswith("kernelsession_"))
    return op.log_tails(OPERATOR_LOG_LINES) + "\n--- metrics of the active replica:\n" + own


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if SKIP_FAILS and report.skipped:  # a module skipped as a whole
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which fails the run: {reason}"


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str, float, str], None]:
    """``report_figure(what, value, unit)``: a figure a test measured (a time, say).

    Tests report timings instead of asserting them; the figures are listed at the end
    of the run (and in the JUnit XML as properties).
    """

    def report(what: str, value: float, unit: str) -> None:
        request.node.user_properties.append((what, f"{value:.3f} {unit}"))

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    figures = [
        (report.nodeid, what, value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for what, value in getattr(report, "user_properties", ())
    ]
    if figures:
        terminalreporter.section("figures measured by the tests")
        for nodeid, what, value in figures:
            terminalreporter.write_line(f"{value:>14}  {what}  ({nodeid})")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the machine's single node for themselves (they stop the shared
    cluster, or start nodes of their own) run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("exclusive_node") is not None)


@pytest.fixture(scope="session")
def host_baseline() -> hoststate.HostState:
    """The host before this run started a node."""
    return hoststate.snapshot()


_STARTED: list[LocalCluster] = []  # the shared cluster, once started


@pytest.fixture(scope="session")
def cluster(host_baseline: hoststate.HostState) -> Iterator[LocalCluster]:
    """A local cluster shared by the whole test session."""
    c = LocalCluster(audit=True)  # tests/operator/test_rbac.py reads the audit log
    try:
        timings = c.start()
    except BinariesUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\n[localcluster] {timings.summary()}; KUBECONFIG={c.kubeconfig}", file=sys.stderr)
    _STARTED.append(c)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def exclusive_node(host_baseline: hoststate.HostState) -> None:
    """Stop the shared cluster (if it runs) so the test can start nodes of its own, and
    check that stopping it left the host as it was before the run."""
    while _STARTED:
        problems = _STARTED.pop().stop()
        assert problems == []
        assert hoststate.diff(host_baseline, hoststate.snapshot()) == []


@pytest.fixture(scope="session")
async def kube_api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    """An admin kubernetes_asyncio ApiClient (system:masters)."""
    api = await k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
            == 0
        ),
        timeout=30,
        what=f"ServiceAccount {name}/default",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def sa_kubeconfig(cluster: LocalCluster, tmp_path: Path) -> Callable[[Any, str, str], Path]:
    """Factory: ``sa_kubeconfig(rbac, namespace, name) -> Path`` (kubeconfig for the SA)."""

    def make(rbac: Any, namespace: str, name: str) -> Path:
        return _sa_kubeconfig(
            cluster, rbac, namespace, name, tmp_path / f"{namespace}-{name}.kubeconfig"
        )

    return make


@pytest.fixture(scope="session")
def installed(cluster: LocalCluster) -> LocalCluster:
    install_manifests(cluster)
    set_labs_policy(cluster, TEST_POLICY)
    return cluster


@pytest.fixture(scope="session")
def ingress_controller(installed: LocalCluster) -> IngressController:
    """Traefik installed into the shared cluster (once per run), ready."""
    try:
        controller = install_ingress(installed)
    except BinariesUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(
        f"\n[ingress] Traefik ready in {controller.ready_seconds:.1f}s at {controller.address}",
        file=sys.stderr,
    )
    return controller


@pytest.fixture(scope="session")
def operator(
    installed: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> InClusterOperator:
    op = InClusterOperator(installed, tmp_path_factory.mktemp("operator"), env=OPERATOR_ENV)
    request.config.stash[_OPERATOR] = op
    op.start()
    return op


@pytest.fixture
async def ks(installed: LocalCluster) -> AsyncIterator[KernelSessionClient]:
    async with KernelSessionClient(namespace=LABS, kubeconfig=str(installed.kubeconfig)) as client:
        yield client


@pytest.fixture
def session_name(installed: LocalCluster) -> Iterator[str]:
    """A unique session name, deleted (with its children) after the test."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    installed.kubectl(
        "-n", LABS, "delete", "ks", name, "--ignore-not-found", "--wait=false", check=False
    )
