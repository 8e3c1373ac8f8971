"""The ``kernelsession`` console script, run as a subprocess against a real lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(sys.executable).parent / "kernelsession")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def token_file(lab, tmp_path) -> str:
    path = tmp_path / "token"
    path.write_text(lab.token + "\n")
    return str(path)


def test_exec_prints_stdout(lab, token_file):
    result = run_cli("exec", "--url", lab.url, "--token-file", token_file, "-c", "print(2 + 3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5\n"
    assert result.stderr == ""  # no log lines without -v
    assert lab.token not in result.stdout + result.stderr


def test_exec_token_from_env(lab):
    result = run_cli(
        "exec", "--url", lab.url, "--token-env", "LAB_TOKEN", "-c", "print('env')",
        env={"LAB_TOKEN": lab.token},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "env\n"


def test_exec_error_exits_1(lab, token_file):
    result = run_cli("exec", "--url", lab.url, "--token-file", token_file, "-c", "1/0")
    assert result.returncode == 1
    assert "JupyterExecutionError" in result.stderr
    assert "ZeroDivisionError" in result.stderr
    assert "\x1b" not in result.stderr


def test_probe_healthy(lab, token_file):
    result = run_cli("probe", "--url", lab.url, "--token-file", token_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy")
    for phase in ("login", "session_create", "websocket_open", "execute", "cleanup"):
        assert phase in result.stdout


def test_probe_json(lab_subpath, tmp_path):
    token = tmp_path / "t"
    token.write_text(lab_subpath.token)
    result = run_cli("probe", "--url", lab_subpath.url, "--token-file", str(token), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert set(report["seconds"]) == {
        "login",
        "session_create",
        "websocket_open",
        "execute",
        "cleanup",
    }
    assert all(v is not None for v in report["seconds"].values())


def test_probe_unhealthy_wrong_token(lab, tmp_path):
    token = tmp_path / "t"
    token.write_text("not-the-token")
    result = run_cli("probe", "--url", lab.url, "--token-file", str(token), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["error"]["type"] == "JupyterWebError"
    assert "not-the-token" not in result.stdout + result.stderr


def test_probe_unreachable_is_unhealthy(tmp_path):
    token = tmp_path / "t"
    token.write_text("x")
    result = run_cli("probe", "--url", "http://127.0.0.1:9/", "--token-file", str(token))
    assert result.returncode == 1
    assert "UNHEALTHY" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["probe"],
        ["exec", "-c", "print(1)"],
        ["exec", "--url", "http://127.0.0.1:1/", "-c", "1", "--token-env", "NO_SUCH_VAR_XYZ"],
        ["probe", "--url", "ftp://x/", "--token-env", "HOME"],
        ["exec", "--url", "http://x/", "--token", "secret", "-c", "1"],  # no plain token arg
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args):
    result = run_cli(*args, env={"JUPYTER_TOKEN": ""})
    assert result.returncode == 2, (result.stdout, result.stderr)


def test_session_name_without_cluster_is_not_healthy(tmp_path):
    result = run_cli(
        "probe", "some-session", "-n", "labs", env={"KUBECONFIG": str(tmp_path / "none")}
    )
    assert result.returncode in (1, 2)
    assert "some-session" in result.stderr


def test_notebook_runs_cells_and_names_the_failing_one(lab, token_file, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# smoke"),
        nbformat.v4.new_code_cell("print('cell one')", id="one"),
        nbformat.v4.new_code_cell("print('cell two')", id="two"),
    ]
    good = tmp_path / "good.ipynb"
    nbformat.write(nb, good)
    nb.cells.append(nbformat.v4.new_code_cell("1/0", id="bad-cell"))
    bad = tmp_path / "bad.ipynb"
    nbformat.write(nb, bad)
    ok = run_cli("notebook", "--url", lab.url, "--token-file", token_file, str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "cell one\ncell two\n"
    failed = run_cli("notebook", "--url", lab.url, "--token-file", token_file, str(bad))
    assert failed.returncode == 1
    assert "notebook=bad.ipynb" in failed.stderr
    assert "cell=bad-cell" in failed.stderr
    assert "cell_number=4" in failed.stderr
    assert "ZeroDivisionError" in failed.stderr


def test_notebook_path_before_between_and_after_options(lab, token_file, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('anywhere')", id="one")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    for argv in (
        [str(path), "--url", lab.url, "--token-file", token_file],
        ["--url", lab.url, str(path), "--token-file", token_file],
        ["--url", lab.url, "--token-file", token_file, str(path)],
    ):
        result = run_cli("notebook", *argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert result.stdout == "anywhere\n"
