"""Pure parts of the prober: metric names and labels, result formatting, error dicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest

from kernelsession.client import (
    CellResult,
    CodeContext,
    ExecutionResult,
    JupyterExecutionError,
    JupyterWebError,
    KernelSessionFailedError,
    KernelSessionNotFoundError,
    NotebookResult,
)
from kernelsession.client.cli._metrics import ProbeMetrics
from kernelsession.client.cli._probers import spawn_name
from kernelsession.client.cli._results import (
    LAB_PHASES,
    ProbeResult,
    UnexpectedOutputError,
    error_dict,
    error_type,
    failure_reason,
    format_result,
    notebook_report,
)

SECRET = "0123456789abcdef-secret-token"
WHEN = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _value(metrics: ProbeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_success_and_failure_counted_by_error_type() -> None:
    metrics = ProbeMetrics()
    ok = ProbeResult("lab", "http://x/", WHEN, {"login": 0.01, "execute": 0.002})
    metrics.record(ok)
    metrics.record(ok)
    web = JupyterWebError("refused", method="POST", url="http://x/login")
    metrics.record(ProbeResult("lab", "http://x/", WHEN, {}, error=web))
    metrics.record(ProbeResult("lab", "http://x/", WHEN, {}, error=TimeoutError()))
    total = "kernelsession_probe_total"
    assert _value(metrics, total, result="success", error="") == 2
    assert _value(metrics, total, result="failure", error="JupyterWebError") == 1
    assert _value(metrics, total, result="failure", error="TimeoutError") == 1
    assert _value(metrics, "kernelsession_probe_up") == 0
    assert _value(metrics, "kernelsession_probe_seconds_count", phase="login") == 2
    assert _value(metrics, "kernelsession_probe_seconds_sum", phase="execute") == 0.004
    assert _value(metrics, "kernelsession_probe_seconds_count", phase="websocket_open") == 0
    assert (_value(metrics, "kernelsession_probe_last_success_timestamp_seconds") or 0) > 0
    metrics.record(ok)
    assert _value(metrics, "kernelsession_probe_up") == 1


def test_metrics_live_on_their_own_registry() -> None:
    metrics = ProbeMetrics()
    ProbeMetrics()  # a second one does not clash (nothing on the global registry)
    assert REGISTRY.get_sample_value("kernelsession_probe_up") is None
    text = generate_latest(metrics.registry).decode()
    for phase in LAB_PHASES:  # every phase is exported before the first check
        assert f'kernelsession_probe_seconds_count{{phase="{phase}"}} 0.0' in text
    assert 'kernelsession_probe_total{error="",result="success"} 0.0' in text
    assert "kernelsession_spawn" not in text  # spawn metrics only for spawn probers


def test_spawn_metrics() -> None:
    metrics = ProbeMetrics(spawn=True)
    seconds = {"create": 0.05, "ready": 3.2, "execute": 0.01, "delete": 1.5}
    metrics.record(ProbeResult("spawn", "labs/probe-1", WHEN, seconds))
    failed = KernelSessionNotFoundError("gone", name="probe-2", namespace="labs")
    metrics.record(ProbeResult("spawn", "labs/probe-2", WHEN, {"create": 0.05}, error=failed))
    assert _value(metrics, "kernelsession_spawn_seconds_count") == 1
    assert _value(metrics, "kernelsession_spawn_seconds_sum") == 3.2
    assert _value(metrics, "kernelsession_spawn_delete_seconds_sum") == 1.5
    assert _value(metrics, "kernelsession_spawn_total", result="success", reason="") == 1
    assert (
        _value(
            metrics,
            "kernelsession_spawn_total",
            result="failure",
            reason="KernelSessionNotFoundError",
        )
        == 1
    )
    assert (
        _value(
            metrics,
            "kernelsession_probe_total",
            result="failure",
            error="KernelSessionNotFoundError",
        )
        == 1
    )


def test_spawn_failures_by_the_sessions_own_reason() -> None:
    failed = KernelSessionFailedError(
        "image cannot be pulled",
        name="p",
        namespace="labs",
        phase="Failed",
        reason="ImagePullFailed",
    )
    assert failure_reason(failed) == "ImagePullFailed"
    assert failure_reason(TimeoutError()) == "TimeoutError"
    assert failure_reason(None) == ""
    metrics = ProbeMetrics(spawn=True)
    metrics.record(ProbeResult("spawn", "labs/p", WHEN, {"create": 0.1}, error=failed))
    reason = {"result": "failure", "reason": "ImagePullFailed"}
    assert metrics.registry.get_sample_value("kernelsession_spawn_total", reason) == 1


def test_interrupted_results_are_not_counted() -> None:
    metrics = ProbeMetrics(spawn=True)
    metrics.record(ProbeResult("spawn", "labs/p", WHEN, {"create": 0.1}, interrupted=True))
    assert _value(metrics, "kernelsession_probe_total", result="success", error="") == 0
    assert _value(metrics, "kernelsession_spawn_seconds_count") == 0


def test_error_type_names() -> None:
    assert error_type(None) == ""
    assert error_type(UnexpectedOutputError("x")) == "UnexpectedOutputError"
    assert error_type(JupyterWebError("x", method="GET", url="u")) == "JupyterWebError"


def test_error_dict_is_redacted() -> None:
    web = JupyterWebError(
        f"login failed with token {SECRET}",
        method="POST",
        url=f"http://lab/login?token={SECRET}",
        status=403,
        body=f"bad token {SECRET}",
        secrets=(SECRET,),
    )
    ks = KernelSessionNotFoundError("KernelSession labs/a not found", name="a", namespace="labs")
    for error in (web, ks, RuntimeError(f"url http://x/?token={SECRET}")):
        text = json.dumps(error_dict(error))
        assert SECRET not in text
        assert error_dict(error)["type"] == type(error).__name__
    assert error_dict(web)["status"] == 403
    assert error_dict(ks)["session"] == "a"


def test_format_result_json_and_text() -> None:
    error = JupyterExecutionError(
        "the code raised ZeroDivisionError",
        ename="ZeroDivisionError",
        evalue="division by zero",
        error="Traceback...\nZeroDivisionError: division by zero",
        status="error",
        context=CodeContext(notebook="smoke.ipynb", cell="c1", cell_number="2"),
    )
    failed = ProbeResult("lab", "labs/alice", WHEN, {"execute": 0.0123}, error=error)
    line = format_result(failed, as_json=True)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["result"] == "failure"
    assert obj["healthy"] is False
    assert obj["error"]["type"] == "JupyterExecutionError"
    assert obj["error"]["context"]["cell"] == "c1"
    assert obj["seconds"] == {"execute": 0.0123}
    text = format_result(failed, as_json=False)
    assert "failure JupyterExecutionError: the code raised ZeroDivisionError" in text
    assert "execute=12.3ms" in text
    ok = ProbeResult("lab", "labs/alice", WHEN, {"execute": 0.004})
    assert json.loads(format_result(ok, as_json=True))["error"] is None
    assert " success execute=4.0ms" in format_result(ok, as_json=False)


def test_notebook_report() -> None:
    cell = CellResult("one", 2, "hi\n", 0.5, ExecutionResult("m", "hi\n", ""))
    ok = notebook_report("/x/smoke.ipynb", WHEN, result=NotebookResult("smoke.ipynb", [cell], 0.75))
    assert ok["result"] == "success"
    assert ok["cells"] == [{"cell_number": 2, "cell_id": "one", "seconds": 0.5, "stdout": "hi\n"}]
    error = JupyterExecutionError("boom", context=CodeContext(notebook="smoke.ipynb", cell="c"))
    failed = notebook_report("/x/smoke.ipynb", WHEN, error=error)
    assert failed["notebook"] == "smoke.ipynb"
    assert failed["result"] == "failure"
    assert failed["error"]["context"]["notebook"] == "smoke.ipynb"
    json.dumps(failed)


def test_spawn_names_are_unique_dns_labels() -> None:
    names = {spawn_name() for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith("probe-") and len(n) <= 50 and n.islower() for n in names)


async def test_shielded_cleanup_finishes_before_the_cancel_propagates() -> None:
    """What spawn_once relies on: a cancel during the create or the delete waits for it to
    finish, then propagates (a second cancel does not cut it short either)."""
    import asyncio

    from kernelsession.client.cli._probers import _await_shielded

    finished: list[str] = []
    gate = asyncio.Event()

    async def step() -> None:
        await gate.wait()
        finished.append("step")

    async def outer() -> None:
        try:
            await _await_shielded(asyncio.ensure_future(step()))
        finally:
            finished.append("after")

    task = asyncio.ensure_future(outer())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second signal
    await asyncio.sleep(0)
    assert finished == []  # still waiting for the step
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["step", "after"]


def test_metrics_served_on_loopback_and_stopped() -> None:
    import httpx

    metrics = ProbeMetrics()
    port = metrics.serve(0, "127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
        assert "kernelsession_probe_up 0.0" in text
    finally:
        metrics.stop_serving()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False)
