"""`kernelsession open` command line: flags and defaults (no lab, no cluster)."""

from __future__ import annotations

import pytest

from kernelsession.client.cli._main import build_parser, main
from kernelsession.client.cli._open import _wants_browser


def test_defaults() -> None:
    args = build_parser().parse_args(["open", "alice"])
    assert args.name == "alice"
    assert args.namespace == "labs"
    assert args.port == 0
    assert args.browser is None
    assert args.no_resume is False
    assert args.timeout == 300.0


def test_flags() -> None:
    args = build_parser().parse_args(
        ["open", "bob", "-n", "team", "--port", "8890", "--no-resume", "--browser"]
    )
    assert (args.namespace, args.port, args.no_resume, args.browser) == ("team", 8890, True, True)
    assert build_parser().parse_args(["open", "bob", "--no-browser"]).browser is False


def test_browser_and_no_browser_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["open", "bob", "--browser", "--no-browser"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {}, False),  # headless: only print the URL
        (None, {"DISPLAY": ":0"}, True),
        (None, {"WAYLAND_DISPLAY": "wayland-0"}, True),
        (True, {}, True),
        (False, {"DISPLAY": ":0"}, False),
    ],
)
def test_browser_default_follows_the_display(
    monkeypatch: pytest.MonkeyPatch, flag: bool | None, env: dict[str, str], expected: bool
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(["open", "x"])
    args.browser = flag
    assert _wants_browser(args) is expected


def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["open", "x", "--port", "70000"]) == 2
    assert "--port 70000: not a port number" in capsys.readouterr().err
