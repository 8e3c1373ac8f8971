"""`kernelsession probe --every --metrics-port` and `notebook` against real jupyter-servers.

Every process started here is stopped by PID in a ``finally``; conditions are polled
from the metrics endpoint with deadlines (tests/helpers.py ``wait_for``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nbformat
import pytest
from headless import stop_process_tree
from helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

from kernelsession.client.testing import LocalJupyterServer

SCRIPT = str(Path(sys.executable).parent / "kernelsession")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, env=_env())


@dataclass
class Prober:
    process: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path
    port: int = 0

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def scrape(self) -> Samples:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5, trust_env=False).text
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def value(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def failures(self) -> dict[str, float]:
        return {
            dict(labels)["error"]: v
            for (name, labels), v in self.scrape().items()
            if name == "kernelsession_probe_total" and dict(labels)["result"] == "failure"
        }


@contextmanager
def prober(tmp_path: Path, *args: str) -> Iterator[Prober]:
    """Start `kernelsession probe ... --metrics-port 0` on loopback; stop it by PID."""
    out, err = tmp_path / "prober.out", tmp_path / "prober.err"
    with out.open("w") as o, err.open("w") as e:
        process = subprocess.Popen(
            [SCRIPT, "probe", *args, "--metrics-port", "0", "--metrics-address", "127.0.0.1"],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
    p = Prober(process, out, err)
    try:

        def port() -> int:
            assert process.poll() is None, p.stderr()
            for line in p.stderr().splitlines():
                if line.startswith("serving metrics on "):
                    return int(line.rsplit(":", 1)[1].split("/")[0])
            return 0

        p.port = wait_for(port, timeout=30, what="the metrics port line")
        yield p
    finally:
        stop_process_tree(process, grace=30)


@pytest.fixture
def token_file(tmp_path: Path):
    def write(server: LocalJupyterServer) -> str:
        path = tmp_path / "token"
        path.write_text(server.token + "\n")
        return str(path)

    return write


def test_prober_success_then_failure_types_then_success_again(tmp_path, token_file, lab_sessions):
    first = LocalJupyterServer().start()
    second: LocalJupyterServer | None = None
    try:
        tokens = token_file(first)
        with prober(tmp_path, "--url", first.url, "--token-file", tokens, "--every", "0.2") as p:
            wait_for(
                lambda: p.value("kernelsession_probe_total", result="success", error="") >= 3,
                timeout=60,
                what="3 successful checks",
            )
            assert p.value("kernelsession_probe_up") == 1
            assert p.value("kernelsession_probe_last_success_timestamp_seconds") > 0
            for phase in ("login", "session_create", "websocket_open"):
                assert p.value("kernelsession_probe_seconds_count", phase=phase) == 1
            assert p.value("kernelsession_probe_seconds_count", phase="execute") >= 3
            # one lab session kept open across checks
            assert len(asyncio.run(lab_sessions(first))) == 1

            first.stop()  # by PID: the lab goes away
            wait_for(
                lambda: p.failures().get("JupyterWebError", 0) >= 2,
                timeout=60,
                what="failures typed JupyterWebError (connection refused)",
            )
            assert p.value("kernelsession_probe_up") == 0
            assert set(p.failures()) <= {"JupyterWebError", "JupyterWebSocketError"}
            successes = p.value("kernelsession_probe_total", result="success", error="")

            # a server back on the same port (same token): the prober recovers by itself
            second = LocalJupyterServer(port=first.port, token=first.token).start()
            wait_for(
                lambda: (
                    p.value("kernelsession_probe_total", result="success", error="")
                    >= successes + 2
                ),
                timeout=60,
                what="successes again after the server came back",
            )
            assert p.value("kernelsession_probe_up") == 1
            assert p.value("kernelsession_probe_seconds_count", phase="login") >= 2

            p.process.send_signal(signal.SIGTERM)
            assert p.process.wait(30) == 0, p.stderr()
            # the lab session it had opened on the second server was deleted on the way out
            assert asyncio.run(lab_sessions(second)) == []
            output = p.stdout() + p.stderr()
            assert first.token not in output
            lines = p.stdout().splitlines()
            assert any(" success " in line for line in lines)
            assert any(" failure JupyterWebError" in line for line in lines)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_prober_json_lines_and_sigint(lab, tmp_path, token_file, lab_sessions):
    before = len(asyncio.run(lab_sessions(lab)))
    args = ("--url", lab.url, "--token-file", token_file(lab), "--every", "0.2", "--json")
    with prober(tmp_path, *args) as p:
        wait_for(lambda: len(p.stdout().splitlines()) >= 2, timeout=60, what="2 JSON lines")
        p.process.send_signal(signal.SIGINT)
        assert p.process.wait(30) == 0, p.stderr()
    for line in p.stdout().splitlines():
        obj = json.loads(line)
        assert obj["result"] == "success", obj
        assert obj["probe"] == "lab"
        assert obj["error"] is None
        assert "execute" in obj["seconds"]
    assert lab.token not in p.stdout() + p.stderr()
    assert len(asyncio.run(lab_sessions(lab))) == before


def test_prober_json_failure_carries_the_typed_error(tmp_path):
    token = tmp_path / "t"
    token.write_text("secret-token-value")
    args = ("--url", "http://127.0.0.1:9/", "--token-file", str(token), "--every", "0.2")
    with prober(tmp_path, *args, "--json") as p:
        wait_for(lambda: p.stdout().count("\n") >= 2, timeout=60, what="2 JSON lines")
        assert p.failures().get("JupyterWebError", 0) >= 1
    obj = json.loads(p.stdout().splitlines()[0])
    assert obj["result"] == "failure"
    assert obj["error"]["type"] == "JupyterWebError"
    assert obj["error"]["status"] is None  # no response: connection refused
    assert "secret-token-value" not in p.stdout() + p.stderr()


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", "--metrics-port", "0"],
        ["probe", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", "--every", "0"],
        ["probe", "--spawn", "--url", "http://127.0.0.1:9/", "--token-env", "HOME"],
        ["probe", "--spawn", "somename"],
        ["probe", "--every", "5"],
        ["probe", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", "--notebook", "x.ipynb"],
        [
            "probe",
            "--url",
            "http://127.0.0.1:9/",
            "--token-env",
            "HOME",
            "--every",
            "1",
            "--notebook",
            "/no/such.ipynb",
        ],
        ["notebook", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", "/no/such.ipynb"],
    ],
)
def test_prober_usage_errors_exit_2_without_traceback(args):
    result = run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("kernelsession")


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# probe")]
    nb.cells += [nbformat.v4.new_code_cell(src, id=f"c{i}") for i, src in enumerate(sources, 1)]
    nbformat.write(nb, path)
    return path


def test_notebook_rejects_non_notebooks_before_connecting(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("this is not json")
    wrong = tmp_path / "wrong.ipynb"
    wrong.write_text(json.dumps({"cells": "nope"}))
    for path in (bad, wrong, tmp_path):
        # the URL is unreachable: exit 2 proves the file was checked first
        result = run_cli(
            "notebook", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", str(path)
        )
        assert result.returncode == 2, (path, result.stderr)
        assert "Traceback" not in result.stderr
        assert str(path) in result.stderr


def test_notebook_verbose_seconds_and_json(lab, tmp_path, token_file):
    tokens = token_file(lab)
    good = _notebook(tmp_path / "good.ipynb", "print('a')", "x = 2", "print(x * 21)")
    verbose = run_cli("notebook", "--url", lab.url, "--token-file", tokens, "-v", str(good))
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == "a\n42\n"
    for number, cell_id in ((2, "c1"), (3, "c2"), (4, "c3")):
        assert f"cell {number} (id {cell_id}): " in verbose.stderr
    as_json = run_cli("notebook", "--url", lab.url, "--token-file", tokens, "--json", str(good))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["result"] == "success"
    assert [c["stdout"] for c in report["cells"]] == ["a\n", "", "42\n"]
    assert [c["cell_id"] for c in report["cells"]] == ["c1", "c2", "c3"]

    bad = _notebook(tmp_path / "bad.ipynb", "print('a')", "raise KeyError('nope')", "print(1)")
    failed = run_cli("notebook", "--url", lab.url, "--token-file", tokens, "--json", str(bad))
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["result"] == "failure"
    error = report["error"]
    assert error["type"] == "JupyterExecutionError"
    assert error["ename"] == "KeyError"
    assert error["context"] == {
        "node": None,
        "image": None,
        "notebook": "bad.ipynb",
        "cell": "c2",
        "cell_number": "3",
    }
    assert "KeyError" in error["traceback"]
    assert lab.token not in failed.stdout + failed.stderr
    text = run_cli("notebook", "--url", lab.url, "--token-file", tokens, str(bad))
    assert text.returncode == 1
    assert "cell=c2" in text.stderr
    assert "cell_number=3" in text.stderr
    assert "KeyError" in text.stderr


def test_spawn_probe_without_an_api_server_fails_typed(tmp_path):
    """No cluster: the create fails, the cleanup delete is still attempted, exit 1, JSON."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "kube-secret-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = subprocess.run(
        [SCRIPT, "probe", "--spawn", "--json", "--ready-timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["probe"] == "spawn"
    assert report["result"] == "failure"
    assert report["error"]["type"]
    assert report["target"].startswith("labs/probe-")
    assert "Traceback" not in result.stderr
    assert "kube-secret-token" not in result.stdout + result.stderr


async def test_a_hung_server_is_a_timeout_failure_not_a_hang(report_figure):
    """A server that accepts connections and never answers: the check fails within its
    deadline with error type TimeoutError, and the next check tries again."""
    import socket

    from kernelsession.client import JupyterLabSessionManager
    from kernelsession.client.cli._metrics import ProbeMetrics
    from kernelsession.client.cli._probers import LabProber

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:

        async def open_manager() -> JupyterLabSessionManager:
            return JupyterLabSessionManager(base_url=url, token="t", username="u")

        metrics = ProbeMetrics()
        prober = LabProber(open_manager, target=url, timeout=1, metrics=metrics, deadline=0.5)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            t0 = loop.time()
            async with asyncio.timeout(30):  # a hang fails the test; the time is reported
                result = await prober.check()
            report_figure(f"a silent lab's check {attempt} failed after", loop.time() - t0, "s")
            assert type(result.error) is TimeoutError
            value = metrics.registry.get_sample_value(
                "kernelsession_probe_total", {"result": "failure", "error": "TimeoutError"}
            )
            assert value == attempt
        await prober.close()
    finally:
        silent.close()


def test_prober_runs_a_notebook_each_interval(lab, tmp_path, token_file):
    """`probe --every --notebook`: a synthetic test; a failing cell is a typed failure
    naming the cell, counted as JupyterExecutionError."""
    good = _notebook(tmp_path / "good.ipynb", "print('ok')")
    bad = _notebook(tmp_path / "flaky.ipynb", "print('a')", "assert False, 'broken'")
    tokens = token_file(lab)
    for path, expected in ((good, "success"), (bad, "failure")):
        args = ("--url", lab.url, "--token-file", tokens, "--every", "0.2", "--json")
        with prober(tmp_path, *args, "--notebook", str(path)) as p:
            wait_for(lambda: p.stdout().count("\n") >= 2, timeout=60, what="2 results")
            failures = p.failures()
        results = [json.loads(line) for line in p.stdout().splitlines()]
        assert {r["result"] for r in results} == {expected}
        if expected == "success":
            assert failures == {}
            continue
        assert failures.get("JupyterExecutionError", 0) >= 2
        error = results[0]["error"]
        assert error["type"] == "JupyterExecutionError"
        assert error["ename"] == "AssertionError"
        assert error["context"]["notebook"] == "flaky.ipynb"
        assert error["context"]["cell"] == "c2"
        assert error["context"]["cell_number"] == "3"


def test_sigterm_mid_check_stops_at_once_and_closes_the_session(
    lab, tmp_path, token_file, lab_sessions
):
    """A check still running (a cell waiting on a file that never comes) when SIGTERM
    arrives: the prober does not wait for it, deletes its lab session and exits 0."""
    before = len(asyncio.run(lab_sessions(lab)))
    started = tmp_path / "started"
    cell = (
        "import pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    slow = _notebook(tmp_path / "slow.ipynb", cell)
    args = ("--url", lab.url, "--token-file", token_file(lab), "--every", "1", "--timeout", "300")
    with prober(tmp_path, *args, "--notebook", str(slow)) as p:
        wait_for(started.exists, timeout=60, what="the slow cell running")
        assert len(asyncio.run(lab_sessions(lab))) == before + 1
        p.process.send_signal(signal.SIGTERM)
        assert p.process.wait(20) == 0, p.stderr()
    assert p.stdout() == ""  # the interrupted check is no result
    assert len(asyncio.run(lab_sessions(lab))) == before


def test_one_shot_probe_json_has_the_same_result_keys(lab, token_file):
    ok = run_cli("probe", "--url", lab.url, "--token-file", token_file(lab), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert (report["probe"], report["result"], report["healthy"]) == ("lab", "success", True)
    down = run_cli("probe", "--url", "http://127.0.0.1:9/", "--token-env", "HOME", "--json")
    assert down.returncode == 1
    report = json.loads(down.stdout)
    assert report["result"] == "failure"
    assert report["error"]["type"] == "JupyterWebError"
    assert report["error"]["failed_at"]  # the client's to_dict()
