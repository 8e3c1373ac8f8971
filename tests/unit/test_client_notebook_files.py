"""Notebook parsing and upload chunking: pure, no server."""

from __future__ import annotations

import nbformat
import pytest

from kernelsession.client._files import iter_chunks
from kernelsession.client._notebook import CodeCell, load_code_cells


def test_code_cells_in_order_with_numbers_and_ids(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("m"),
        nbformat.v4.new_code_cell("a = 1", id="first"),
        nbformat.v4.new_raw_cell("r"),
        nbformat.v4.new_code_cell(["b = 2\n", "print(b)"], id="second"),
    ]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    name, cells = load_code_cells(path)
    assert name == "n.ipynb"
    assert cells == [CodeCell("first", 2, "a = 1"), CodeCell("second", 4, "b = 2\nprint(b)")]
    name, from_dict = load_code_cells(dict(nb))
    assert (name, from_dict) == ("<notebook>", cells)


def test_not_a_notebook(tmp_path):
    path = tmp_path / "bad.ipynb"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):  # nbformat's NotJSONError is a ValueError
        load_code_cells(path)


def test_iter_chunks(tmp_path):
    data = bytes(range(250)) * 3
    assert b"".join(iter_chunks(data, 100)) == data
    assert [len(c) for c in iter_chunks(data, 300)] == [300, 300, 150]
    assert list(iter_chunks(b"", 10)) == [b""]
    path = tmp_path / "f"
    path.write_bytes(data)
    assert [len(c) for c in iter_chunks(path, 300)] == [300, 300, 150]
    assert b"".join(iter_chunks(str(path), 7)) == data
    assert list(iter_chunks(memoryview(data), 1000)) == [data]
