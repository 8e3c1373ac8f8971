"""`kernelsession` takes options anywhere, as kubectl does: before, between and after
each command's positionals (parsing only; tests/client/test_cli.py runs them on a lab)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from kernelsession.client.cli._main import main, parse_args


@pytest.mark.parametrize(
    "argv",
    [
        ["notebook", "-n", "team", "--timeout", "5", "alice", "nb.ipynb"],  # before
        ["notebook", "alice", "-n", "team", "--timeout", "5", "nb.ipynb"],  # between
        ["notebook", "alice", "nb.ipynb", "-n", "team", "--timeout", "5"],  # after
        ["notebook", "-n", "team", "alice", "--timeout", "5", "nb.ipynb"],  # all three
        ["notebook", "alice", "-n", "team", "nb.ipynb", "--timeout", "5"],
    ],
)
def test_notebook_name_and_path_around_options(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.command == "notebook"
    assert (args.name, args.notebook_path) == ("alice", "nb.ipynb")
    assert (args.namespace, args.timeout) == ("team", 5.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["notebook", "--url", "http://lab/", "--token-env", "T", "nb.ipynb"],
        ["notebook", "--url", "http://lab/", "nb.ipynb", "--token-env", "T"],
        ["notebook", "nb.ipynb", "--url", "http://lab/", "--token-env", "T"],
    ],
)
def test_notebook_with_url_takes_one_positional(argv: list[str]) -> None:
    args = parse_args(argv)
    # the single positional lands in NAME; the command reads it as PATH with --url
    assert (args.url, args.token_env) == ("http://lab/", "T")
    assert [args.name, args.notebook_path] == ["nb.ipynb", None]


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "-n", "team", "-c", "print(1)", "alice"],  # before
        ["exec", "-n", "team", "alice", "-c", "print(1)"],  # between
        ["exec", "alice", "-n", "team", "-c", "print(1)"],  # after
    ],
)
def test_exec_name_anywhere(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.command, args.name, args.namespace, args.code) == (
        "exec",
        "alice",
        "team",
        "print(1)",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "-n", "team", "--every", "30", "alice"],
        ["probe", "-n", "team", "alice", "--every", "30"],
        ["probe", "alice", "-n", "team", "--every", "30", "--json"],
    ],
)
def test_probe_name_anywhere(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.command, args.name, args.namespace, args.every) == ("probe", "alice", "team", 30)


@pytest.mark.parametrize(
    "argv",
    [
        ["open", "-n", "team", "--port", "8890", "alice"],
        ["open", "-n", "team", "alice", "--port", "8890"],
        ["open", "alice", "-n", "team", "--port", "8890", "--no-browser"],
    ],
)
def test_open_name_anywhere(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.command, args.name, args.namespace, args.port) == ("open", "alice", "team", 8890)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["notebook", "a", "b.ipynb", "c"], "unrecognized arguments: c"),
        (["exec", "alice", "bob", "-c", "1"], "unrecognized arguments: bob"),
        (["frobnicate", "alice"], "invalid choice"),
        ([], "required"),
    ],
)
def test_too_many_positionals_or_no_command_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["notebook", "alice", "--url", "http://lab/", "NB", "--token-env", "HOME"],
        ["exec", "alice", "--url", "http://lab/", "-c", "1", "--token-env", "HOME"],
        ["probe", "--url", "http://lab/", "alice", "--token-env", "HOME"],
    ],
)
def test_name_and_url_together_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    notebook = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    assert main([str(notebook) if a == "NB" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert "give a session NAME or --url URL, not both" in err
    assert "Traceback" not in err
