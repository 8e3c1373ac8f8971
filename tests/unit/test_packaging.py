"""Both distributions build as wheels with the right metadata, layout and console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    for project in ("client", "operator", "localcluster"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "build",
                "--no-isolation",
                "--wheel",
                "--outdir",
                str(out),
                str(REPO / project),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return {w.name.split("-")[0]: w for w in out.glob("*.whl")}


def _meta(wheel: Path) -> tuple[list[str], dict[str, list[str]], str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(info).decode())
        eps = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    fields = {k: meta.get_all(k) or [] for k in ("Name", "Requires-Dist", "Requires-Python")}
    return names, fields, eps


def test_client_wheel(wheels: dict[str, Path]) -> None:
    names, meta, eps = _meta(wheels["kernelsession_client"])
    assert meta["Name"] == ["kernelsession-client"]
    assert not any("kopf" in r for r in meta["Requires-Dist"])  # the client never needs kopf
    assert "kernelsession = kernelsession.client.cli:main" in eps
    # The library alone; what only the command needs comes with the `cli` extra.
    requires = meta["Requires-Dist"]
    for app_only in ("h11", "prometheus-client", "aiohttp"):
        assert not any(r.startswith(app_only) and "extra" not in r for r in requires), requires
        assert any(r.startswith(app_only) and "extra == 'cli'" in r for r in requires), requires
    assert "kernelsession/client/cli/__init__.py" in names
    assert "kernelsession/__init__.py" not in names  # namespace package
    assert "kernelsession/client/__init__.py" in names
    assert "kernelsession/client/py.typed" in names
    assert not any(n.startswith("operator/") for n in names)


def test_operator_wheel(wheels: dict[str, Path]) -> None:
    names, meta, eps = _meta(wheels["kernelsession_operator"])
    assert meta["Name"] == ["kernelsession-operator"]
    assert any(r.startswith("kopf") for r in meta["Requires-Dist"])
    assert any(r.startswith("kernelsession-client") for r in meta["Requires-Dist"])
    assert "kernelsession-operator = kernelsession.operator.__main__:main" in eps
    assert "kernelsession/__init__.py" not in names
    assert "kernelsession/operator/handlers.py" in names
    assert not any(n.split("/")[0] == "operator" for n in names)  # never shadow stdlib
    # The local cluster is development tooling: never in the production wheel (or image).
    assert not any(n.startswith("kernelsession/localcluster/") for n in names)
    assert "kernelsession-localcluster" not in eps


def test_localcluster_wheel(wheels: dict[str, Path]) -> None:
    names, meta, eps = _meta(wheels["kernelsession_localcluster"])
    assert meta["Name"] == ["kernelsession-localcluster"]
    assert not any(r.startswith("kopf") for r in meta["Requires-Dist"])
    assert "kernelsession-localcluster = kernelsession.localcluster.__main__:main" in eps
    assert "kernelsession/__init__.py" not in names
    assert "kernelsession/localcluster/building/binaries.py" in names
