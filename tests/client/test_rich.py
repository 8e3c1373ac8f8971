"""Streaming, images and notebooks against a real jupyter-server."""

from __future__ import annotations

import time

import nbformat
import pytest

from kernelsession.client import (
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterLabSession,
    OutputChunk,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


async def test_stream_yields_output_as_produced(session: JupyterLabSession):
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "print('oops', file=sys.stderr, flush=True)\n"
        "time.sleep(2)\n"
        "print('second')\n"
    )
    t0 = time.perf_counter()
    arrivals: list[tuple[float, OutputChunk]] = []
    async for chunk in session.stream(code):
        arrivals.append((time.perf_counter() - t0, chunk))
    total = time.perf_counter() - t0
    assert [c for _, c in arrivals] == [
        OutputChunk("stdout", "first\n"),
        OutputChunk("stderr", "oops\n"),
        OutputChunk("stdout", "second\n"),
    ]
    first_at = arrivals[0][0]
    assert first_at < 1.5, f"first chunk after {first_at:.2f} s: not streamed"
    assert total >= 2.0
    assert arrivals[2][0] - first_at >= 1.9


async def _collect(
    session: JupyterLabSession, code: str, seen: list[str], timeout: float | None = None
) -> None:
    async for chunk in session.stream(code, timeout=timeout):
        seen.append(chunk.text)


async def test_stream_raises_typed_errors_after_output(session: JupyterLabSession):
    seen: list[str] = []
    with pytest.raises(JupyterExecutionError) as excinfo:
        await _collect(session, "print('before')\nraise ValueError('bad')", seen)
    assert seen == ["before\n"]
    assert excinfo.value.ename == "ValueError"


async def test_stream_timeout_interrupts_and_session_is_reused(session: JupyterLabSession):
    seen: list[str] = []
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    with pytest.raises(JupyterExecutionTimeoutError) as excinfo:
        await _collect(session, code, seen, timeout=1)
    assert seen == ["started\n"]
    assert excinfo.value.interrupted
    assert await session.run_python("print('next')") == "next\n"


async def test_images_from_a_matplotlib_figure_and_a_jpeg(session: JupyterLabSession):
    result = await session.execute(
        "import io\n"
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import Image, display\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 3, 2])\n"
        "buf = io.BytesIO()\n"
        "fig.savefig(buf, format='jpeg')\n"
        "plt.show()\n"
        "display(Image(data=buf.getvalue(), format='jpeg'))\n"
        "print('drawn')\n"
    )
    assert result.stdout == "drawn\n"
    assert [mime for mime, _ in result.images] == ["image/png", "image/jpeg"]
    png, jpeg = result.images[0][1], result.images[1][1]
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 1000
    assert jpeg.startswith(JPEG_MAGIC)
    # Without images, the list is empty (and run_python is unaffected).
    assert (await session.execute("print(1)")).images == []


def _notebook(cells: list[object]) -> dict[str, object]:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    return dict(nb)


async def test_run_notebook_from_path(session: JupyterLabSession, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\nprint('not code')"),
        nbformat.v4.new_code_cell("x = 20\nprint('one')", id="c-one"),
        nbformat.v4.new_raw_cell("print('raw, not run')"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(0.3)\nprint(x + 1)", id="c-two"),
    ]
    path = tmp_path / "smoke.ipynb"
    nbformat.write(nb, path)
    result = await session.run_notebook(path)
    assert result.notebook == "smoke.ipynb"
    assert [(c.cell_id, c.cell_number, c.stdout) for c in result.cells] == [
        ("c-one", 2, "one\n"),
        ("c-two", 4, "21\n"),
    ]
    assert result.cells[1].seconds >= 0.3
    assert result.cells[0].seconds > 0
    assert result.stdout == "one\n21\n"
    assert result.seconds >= sum(c.seconds for c in result.cells)


async def test_run_notebook_failing_cell_names_notebook_and_cell(session: JupyterLabSession):
    nb = _notebook(
        [
            nbformat.v4.new_code_cell("reached = []\nreached.append(1)", id="setup"),
            nbformat.v4.new_markdown_cell("text"),
            nbformat.v4.new_code_cell("1 / 0", id="boom"),
            nbformat.v4.new_code_cell("reached.append(3)", id="after"),
        ]
    )
    nb["metadata"] = {"kernelsession": {"name": "failing.ipynb"}}
    with pytest.raises(JupyterExecutionError) as excinfo:
        await session.run_notebook(nb, timeout=30)
    error = excinfo.value
    assert error.ename == "ZeroDivisionError"
    assert error.context is not None
    assert (error.context.notebook, error.context.cell, error.context.cell_number) == (
        "failing.ipynb",
        "boom",
        "3",
    )
    assert error.to_dict()["context"]["cell"] == "boom"
    assert await session.run_python("print(reached)") == "[1]\n"
