"""The library prints nothing unless the application configures logging (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from kernelsession.client.testing import LocalJupyterServer

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    {setup}
    from kernelsession.client import JupyterError, JupyterLabSessionManager

    async def main():
        manager = JupyterLabSessionManager(
            base_url=os.environ["LAB_URL"], token=os.environ["LAB_TOKEN"], username="quiet"
        )
        async with manager as session:
            out = await session.run_python("print('only this')")
            for code, timeout in (("1/0", None), ("import time; time.sleep(5)", 0.5)):
                try:
                    await session.run_python(code, timeout=timeout)
                except JupyterError:
                    pass
        sys.stdout.write(out)

    asyncio.run(main())
    """
)


def _run(lab: LocalJupyterServer, setup: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LAB_URL": lab.url, "LAB_TOKEN": lab.token},
    )


def test_plain_script_prints_nothing_but_its_own_output(lab):
    # Warnings happen here too (a timed-out cell), and still nothing is printed.
    result = _run(lab)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "only this\n"
    assert result.stderr == ""


def test_logging_configured_by_the_application_shows_events(lab):
    result = _run(lab, "import logging; logging.basicConfig(level=logging.DEBUG)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "only this\n"
    assert "kernelsession.client" in result.stderr
    assert "Created lab session" in result.stderr
    assert "Code execution timed out" in result.stderr
    assert lab.token not in result.stderr


def test_cli_logs_with_verbose(lab, tmp_path):
    # Without -v the CLI prints only the code's output: test_cli.py::test_exec_prints_stdout.
    token_file = tmp_path / "token"
    token_file.write_text(lab.token)
    script = os.path.join(os.path.dirname(sys.executable), "kernelsession")
    base = [script, "exec", "--url", lab.url, "--token-file", str(token_file), "-c", "print(3)"]
    verbose = subprocess.run([*base, "-v"], capture_output=True, text=True, timeout=120)
    assert (verbose.returncode, verbose.stdout) == (0, "3\n")
    assert "Created lab session" in verbose.stderr
    assert lab.token not in verbose.stderr
