"""The client library works without the command's `cli` extra; the command says what
to install when the extra is missing (exit 2, no traceback).

A missing package is made real for one subprocess by a ``None`` entry in
``sys.modules`` (Python then raises ModuleNotFoundError for it, as when it is not
installed); the test's own interpreter is left alone.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

APP_ONLY = ("h11", "prometheus_client")  # aiohttp comes with kubernetes_asyncio anyway


def run_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    return subprocess.run(
        [sys.executable, "-c", f"import sys; {hide}\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_library_imports_without_the_cli_extra() -> None:
    result = run_without(
        APP_ONLY,
        "import kernelsession.client as c\n"
        "from kernelsession.client import kubeapi, resources, testing\n"
        "print(c.KernelSessionClient.__name__, c.JupyterLabSessionManager.__name__)\n"
        "assert not any(m.startswith('kernelsession.client.cli.') for m in sys.modules)\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["KernelSessionClient", "JupyterLabSessionManager"]


@pytest.mark.parametrize("missing", APP_ONLY)
def test_command_without_the_extra_names_it(missing: str) -> None:
    result = run_without(
        (missing,),
        "from kernelsession.client.cli import main\nsys.exit(main(['exec', 'x', '-c', '1']))\n",
    )
    assert result.returncode == 2
    assert "pip install 'kernelsession-client[cli]'" in result.stderr
    assert repr(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_command_with_the_extra_runs() -> None:
    result = run_without((), "from kernelsession.client.cli import main\nmain(['--help'])\n")
    assert result.returncode == 0, result.stderr
    for command in ("exec", "probe", "notebook", "open"):
        assert command in result.stdout
