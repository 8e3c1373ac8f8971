"""`make binaries` / `make images` (kernelsession.localcluster.building.prepare): the parts
run side by side with prefixed output, cached parts start no process, and the build scripts
run their parts concurrently and report each one's seconds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernelsession.localcluster.building import binaries, ingressbinaries, nodebinaries, prepare

REPO = Path(__file__).resolve().parents[2]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_parts_run_side_by_side_with_prefixed_lines(tmp_path: Path) -> None:
    # Each part waits (30 s at most) for the other to have started: run one after the
    # other, the first would give up and fail.
    def part(me: str, other: str) -> prepare.Part:
        code = (
            "import pathlib, sys, time\n"
            f"d = pathlib.Path({str(tmp_path)!r}); (d / {me!r}).touch()\n"
            f"print('{me}1', flush=True)\n"
            "deadline = time.monotonic() + 30\n"
            f"while not (d / {other!r}).exists():\n"
            "    if time.monotonic() > deadline: sys.exit('ran alone')\n"
            "    time.sleep(0.05)\n"
            f"print('{me}2')\n"
        )
        return prepare.Part(me, _py(code))

    parts = [part("a", "b"), part("b", "a")]
    out = io.StringIO()
    prepare.run_parts(parts, out=out)
    lines = out.getvalue().splitlines()
    for name in ("a", "b"):
        mine = [line for line in lines if line.startswith(f"[{name} ")]
        assert mine
        assert [line.split("] ", 1)[1] for line in mine] == [f"{name}1", f"{name}2", "done"]
    assert all(p.returncode == 0 and p.seconds is not None for p in parts)
    assert [p.lines for p in parts] == [["a1", "a2"], ["b1", "b2"]]


def test_a_failing_part_is_reported_and_the_others_finish() -> None:
    parts = [
        prepare.Part("ok", _py("print('fine')")),
        prepare.Part("bad", _py("import sys; print('boom'); sys.exit(3)")),
    ]
    out = io.StringIO()
    prepare.run_parts(parts, out=out)
    assert parts[0].returncode == 0
    assert parts[1].returncode == 3
    assert "[bad    0s] FAILED (exit 3)" in out.getvalue()


def test_progress_names_the_parts_still_running() -> None:
    parts = [
        prepare.Part("quick", _py("pass")),
        prepare.Part("slow", _py("import time; time.sleep(2.5)")),
    ]
    out = io.StringIO()
    prepare.run_parts(parts, out=out, progress_every=1.0)
    progress = [line for line in out.getvalue().splitlines() if line.startswith("[prepare")]
    assert progress
    assert all(line.endswith("still building: slow") for line in progress)


def test_everything_cached_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(prepare, "cached_lines", lambda part: [f"{part} cached"])

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("started a build although everything is cached")

    monkeypatch.setattr(prepare, "run_parts", no_build)
    assert prepare.main(["binaries", "images"]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == [
        "controlplane cached",
        "node cached",
        "images cached",
    ]


def test_only_missing_parts_are_built(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        prepare, "cached_lines", lambda part: None if part == "node" else [f"{part} cached"]
    )
    ran: list[list[str]] = []

    def fake_run(parts: list[prepare.Part]) -> None:
        for p in parts:
            ran.append(p.argv)
            p.returncode, p.seconds = 0, 1.0

    monkeypatch.setattr(prepare, "run_parts", fake_run)
    assert prepare.main(["binaries"]) == 0
    assert ran == [prepare.commands()["node"]]
    assert ran[0][-2:] == ["--only", "node"]
    assert "prepare: node 1s" in capsys.readouterr().out


def test_cached_lines_follow_the_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.delenv("KERNELSESSION_NODE_ASSETS", raising=False)
    monkeypatch.setattr(binaries, "repo_root", lambda: None)  # no shared directory
    assert prepare.cached_lines("controlplane") is None
    assert prepare.cached_lines("images") is None
    bin_dir = binaries.cache_dir() / "bin"
    bin_dir.mkdir(parents=True)
    for name in (*binaries.REQUIRED, "kubectl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        os.chmod(bin_dir / name, 0o755)
    lines = prepare.cached_lines("controlplane")
    assert lines is not None
    assert str(bin_dir) in lines[0]


def test_the_ingress_controller_is_a_part_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(ingressbinaries.INGRESS_ASSETS_ENV, raising=False)
    assert prepare.GROUPS["ingress"] == ("ingress",)
    assert "ingress" not in prepare.GROUPS["binaries"]  # `make setup` never builds it
    assert prepare.commands()["ingress"][-2:] == ["ensure", "--ingress"]
    assert prepare.cached_lines("ingress") is None
    bin_dir = ingressbinaries.ingress_cache_dir() / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "traefik").write_text("#!/bin/sh\n")
    os.chmod(bin_dir / "traefik", 0o755)
    lines = prepare.cached_lines("ingress")
    assert lines is not None
    assert ingressbinaries.TRAEFIK_VERSION in lines[0]


def _script_env(tmp_path: Path, fake_go: str) -> dict[str, str]:
    gobin = tmp_path / "gobin"
    gobin.mkdir()
    (gobin / "go").write_text(fake_go)
    os.chmod(gobin / "go", 0o755)
    return dict(
        os.environ,
        PATH=f"{gobin}:{os.environ['PATH']}",
        TMPDIR=str(tmp_path),
        KS_CONTAINERD_VERSION="v9",
        KS_COREDNS_VERSION="v8",
        KS_LOCAL_PATH_VERSION="v7",
    )


# A stand-in for `go build -o OUT PKG...`: waits (30 s at most) until three builds have
# started, so builds run one after the other fail, then writes an executable per package
# (named like go does) that answers --version.
RENDEZVOUS = r"""mkdir -p "$TMPDIR/go-started"; touch "$TMPDIR/go-started/$$"
for _ in $(seq 600); do
  [ "$(ls "$TMPDIR/go-started" | wc -l)" -ge 3 ] && break; sleep 0.05
done
[ "$(ls "$TMPDIR/go-started" | wc -l)" -ge 3 ] || { echo "ran alone"; exit 1; }
"""
FAKE_GO = (
    r"""#!/usr/bin/env bash
[ "$1" = build ] || exit 0
shift; out=
while [ $# -gt 0 ]; do
  case $1 in
    -o) out=$2; shift 2 ;;
    -trimpath) shift ;;
    -*) shift 2 ;;
    *) break ;;
  esac
done
"""
    + RENDEZVOUS
    + r"""for pkg in "$@"; do
  name=${pkg##*/}
  case $out in */) dest=$out$name ;; *) dest=$out ;; esac
  printf '#!/bin/sh\necho %s fake\n' "$name" > "$dest"; chmod +x "$dest"
done
"""
)


def test_build_node_builds_its_parts_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(REPO / nodebinaries.NODE_BUILD_SCRIPT), str(out)],
        env=_script_env(tmp_path, FAKE_GO),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran alone" not in result.stdout + result.stderr  # each build met the others
    assert nodebinaries.NodeBinaries.complete(out)
    for label in ("containerd v9", "coredns v8", "local-path-provisioner v7"):
        assert f"built: {label} in " in result.stdout


def test_build_node_reports_the_failing_part_with_its_output(tmp_path: Path) -> None:
    fail = 'case "$*" in *coredns*) echo "no luck"; exit 1;; esac\n'
    failing = FAKE_GO.replace(RENDEZVOUS, fail)
    result = subprocess.run(
        ["bash", str(REPO / nodebinaries.NODE_BUILD_SCRIPT), str(tmp_path / "out")],
        env=_script_env(tmp_path, failing),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "FAILED: coredns v8; its output:\nno luck" in result.stdout
    assert "built: containerd v9 in " in result.stdout
