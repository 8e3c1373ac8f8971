"""`make binaries` / `make images` (kernelsession.localcluster.building.prepare): the parts
run side by side with prefixed output, cached parts start no process, and the build scripts
run their parts concurrently and report each one's seconds."""

from __future__ import annotations

import io
import os
import re
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
    assert capsys.readouterr().out.split("\n")[:2] == ["binaries cached", "images cached"]


def test_only_missing_parts_are_built(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        prepare, "cached_lines", lambda part: None if part == "images" else [f"{part} cached"]
    )
    ran: list[list[str]] = []

    def fake_run(parts: list[prepare.Part]) -> None:
        for p in parts:
            ran.append(p.argv)
            p.returncode, p.seconds = 0, 1.0

    monkeypatch.setattr(prepare, "run_parts", fake_run)
    assert prepare.main(["binaries", "images"]) == 0
    assert ran == [prepare.commands()["images"]]
    out = capsys.readouterr().out
    assert "binaries cached" in out
    assert "prepare: images 1s" in out


def test_the_control_plane_and_the_node_build_in_one_process() -> None:
    # one graph: the node's build runs after the control plane's and reuses its packages
    assert prepare.GROUPS["binaries"] == ("binaries",)
    argv = prepare.commands()["binaries"]
    assert argv[-2:] == [binaries.__name__, "ensure"]
    assert "--only" not in argv


def test_cached_lines_follow_the_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.delenv("KERNELSESSION_NODE_ASSETS", raising=False)
    monkeypatch.setattr(binaries, "repo_root", lambda: None)  # no shared directory
    assert prepare.cached_lines("binaries") is None
    assert prepare.cached_lines("images") is None
    bin_dir = binaries.cache_dir() / "bin"
    bin_dir.mkdir(parents=True)
    for name in (*binaries.REQUIRED, "kubectl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        os.chmod(bin_dir / name, 0o755)
    assert prepare.cached_lines("binaries") is None  # the node's daemons are missing
    node_dir = nodebinaries.node_cache_dir() / "bin"
    node_dir.mkdir(parents=True)
    for name in nodebinaries.NODE_REQUIRED:
        (node_dir / name).write_text("#!/bin/sh\n")
        os.chmod(node_dir / name, 0o755)
    lines = prepare.cached_lines("binaries")
    assert lines is not None
    assert str(bin_dir) in lines[0]
    assert str(node_dir) in lines[1]


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


K8S_GOMOD = """module k8s.io/kubernetes

go 1.25.0

require (
	github.com/example/shared v1.2.3
	go.etcd.io/etcd/server/v3 v3.6.5 // indirect
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""

# A stand-in for the two `go` commands the scripts run: `go mod download -json` (prints
# where Kubernetes' go.mod is) and `go build [flags] -o OUT/ PKG...` (records its arguments
# and the wrapper module, then writes an executable per package, named like go does: a
# /vN path after the element before it).
FAKE_GO = r"""#!/usr/bin/env bash
if [ "$1 $2" = "mod download" ]; then
  printf '%s' "$FAKE_K8S_GOMOD" > "$TMPDIR/k8s.mod"
  printf '{"GoMod": "%s"}\n' "$TMPDIR/k8s.mod"; exit 0
fi
[ "$1" = build ] || exit 0
n=$(ls "$TMPDIR" | grep -c '^build-.*[.]args$' || true)
echo "$*" > "$TMPDIR/build-$n.args"; cp go.mod "$TMPDIR/build-$n.mod"
[ -n "$FAKE_GO_FAIL" ] && { echo "$FAKE_GO_FAIL"; exit 1; }
shift; out=
while [ $# -gt 0 ]; do
  case $1 in
    -o) out=$2; shift 2 ;;
    -trimpath) shift ;;
    -*) shift 2 ;;
    *) break ;;
  esac
done
for pkg in "$@"; do
  name=${pkg##*/}
  case $name in v[0-9]*) name=${pkg%/*}; name=${name##*/} ;; esac
  printf '#!/bin/sh\necho %s fake\n' "$name" > "$out$name"; chmod +x "$out$name"
done
"""


def _run_script(tmp_path: Path, script: Path, out: Path, fail: str = "") -> str:
    gobin = tmp_path / "gobin"
    gobin.mkdir(exist_ok=True)
    (gobin / "go").write_text(FAKE_GO)
    os.chmod(gobin / "go", 0o755)
    env = dict(
        os.environ,
        PATH=f"{gobin}:{os.environ['PATH']}",
        TMPDIR=str(tmp_path),
        FAKE_K8S_GOMOD=K8S_GOMOD,
        FAKE_GO_FAIL=fail,
        KS_K8S_VERSION="v1.35.4",
        KS_ETCD_VERSION="v3.6.8",
        KS_CONTAINERD_VERSION="v9",
        KS_COREDNS_VERSION="v8",
        KS_LOCAL_PATH_VERSION="v7",
    )
    result = subprocess.run(
        ["bash", str(REPO / script), str(out)], env=env, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    if fail:
        assert result.returncode != 0, output
    else:
        assert result.returncode == 0, output
    return output


def test_the_control_plane_and_the_node_build_from_one_graph(tmp_path: Path) -> None:
    cp_out, node_out = tmp_path / "cp", tmp_path / "node"
    _run_script(tmp_path, binaries.BUILD_SCRIPT, cp_out)
    _run_script(tmp_path, nodebinaries.NODE_BUILD_SCRIPT, node_out)
    assert binaries.Binaries.from_dir(cp_out) is not None  # etcd named etcd, not "server"
    assert nodebinaries.NodeBinaries.complete(node_out)
    cp_mod = (tmp_path / "build-0.mod").read_text()
    # the node's two builds (local-path-provisioner apart) see the same graph: GOCACHE
    # entries are shared
    assert (tmp_path / "build-1.mod").read_text() == cp_mod
    assert (tmp_path / "build-2.mod").read_text() == cp_mod
    for line in (
        "k8s.io/kubernetes v1.35.4",
        "go.etcd.io/etcd/server/v3 v3.6.8",
        "github.com/containerd/containerd/v2 v9",
        "github.com/coredns/coredns v8",
        "github.com/rancher/local-path-provisioner v7",
        "github.com/example/shared v1.2.3",  # Kubernetes' own pins
        "k8s.io/api => k8s.io/api v0.35.4",  # staging mapped to the published version
    ):
        assert line in cp_mod, line
    assert "v3.6.5" not in cp_mod  # Kubernetes' pin of a module pinned here is dropped
    cp_args = (tmp_path / "build-0.args").read_text()
    node_args = (tmp_path / "build-1.args").read_text()
    assert "github.com/rancher/local-path-provisioner" in (tmp_path / "build-2.args").read_text()
    tags = re.search(r"-tags (.+?) -ldflags", cp_args)
    assert tags is not None
    assert f"-tags {tags.group(1)} -ldflags" in node_args
    assert "./coredns" in node_args  # the trimmed CoreDNS main, not the upstream one
    assert "github.com/coredns/coredns " not in node_args + " "


def test_a_failed_build_fails_the_script_with_its_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    output = _run_script(tmp_path, nodebinaries.NODE_BUILD_SCRIPT, out, fail="no luck")
    assert "no luck" in output
    assert not nodebinaries.NodeBinaries.complete(out)
    assert not any(out.iterdir())
